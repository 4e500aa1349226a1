# -*- coding: utf-8 -*-
# Copyright: ulp contributors
# GNU General Public License v2.0 or later (see https://www.gnu.org/licenses/old-licenses/gpl-2.0.txt)
"""Running ulp with --json, shared by the modules of ulp.livepatch.

The fields of ulp's JSON these modules read are guarded by
crates/ulp/tests/json_interface.rs in the ulp repository: keep the two in
step.
"""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

import json
import os


def find_ulp(module, ulp):
    """The path of the ulp binary: ULP itself when it names a path, else
    ULP looked up on the PATH (failing the module when it is not there)."""
    if os.sep in ulp:
        if not os.access(ulp, os.X_OK):
            module.fail_json(msg="ulp binary '%s' is missing or not executable" % ulp)
        return ulp
    return module.get_bin_path(ulp, required=True)


def run_json(module, ulp, args):
    """Runs `ulp ARGS --json`; returns (exit status, document or None,
    stderr). The document is None when ulp printed none (a usage error)."""
    rc, out, err = module.run_command([ulp] + list(args) + ['--json'])
    doc = None
    if out.strip():
        try:
            doc = json.loads(out)
        except ValueError:
            doc = None
    return rc, doc, err.strip()


def process_name(pid):
    """The name of process PID (/proc/PID/comm), or None when it is gone."""
    try:
        with open('/proc/%d/comm' % pid) as f:
            return f.read().strip()
    except (IOError, OSError):
        return None
