# -*- coding: utf-8 -*-
# Copyright: ulp contributors
# GNU General Public License v2.0 or later (see https://www.gnu.org/licenses/old-licenses/gpl-2.0.txt)
"""Running ulp with --json, shared by the modules of ulp.livepatch.

The fields of ulp's JSON these modules read are guarded by
crates/ulp/tests/json_interface.rs in the ulp repository: keep the two in
step. They are:

* trigger --json: processes[].pid, .name, .results[].patch, .status,
  .reason; errors[].pid, .error
* check --json: applied, runtime, error
* patches --json: processes[].pid, .name, .libraries[].path, .build_id,
  .patches[].container; unpatched
* dump --json: name, build_id
"""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

import json
import os
import struct


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


def all_pids():
    """Every process on the host, in pid order."""
    return sorted(int(d) for d in os.listdir('/proc') if d.isdigit())


def elf_build_id(path):
    """The GNU build id of the ELF file PATH as lower-case hex, or None."""
    try:
        with open(path, 'rb') as f:
            head = f.read(64)
            if len(head) < 52 or head[:4] != b'\x7fELF':
                return None
            is64 = bytearray(head)[4] == 2
            end = '<' if bytearray(head)[5] == 1 else '>'
            if is64:
                phoff = struct.unpack(end + 'Q', head[32:40])[0]
                phentsize, phnum = struct.unpack(end + 'HH', head[54:58])
            else:
                phoff = struct.unpack(end + 'I', head[28:32])[0]
                phentsize, phnum = struct.unpack(end + 'HH', head[42:46])
            for i in range(min(phnum, 512)):
                f.seek(phoff + i * phentsize)
                ph = f.read(phentsize)
                if is64:
                    p_type, _flags, p_offset, _va, _pa, p_filesz = struct.unpack(end + 'IIQQQQ', ph[:40])
                else:
                    p_type, p_offset, _va, _pa, p_filesz = struct.unpack(end + 'IIIII', ph[:20])
                if p_type != 4:  # PT_NOTE
                    continue
                f.seek(p_offset)
                data = f.read(min(p_filesz, 1 << 16))
                pos = 0
                while pos + 12 <= len(data):
                    namesz, descsz, ntype = struct.unpack(end + 'III', data[pos:pos + 12])
                    pos += 12
                    name = data[pos:pos + namesz]
                    pos += (namesz + 3) & ~3
                    desc = data[pos:pos + descsz]
                    pos += (descsz + 3) & ~3
                    if ntype == 3 and name.rstrip(b'\0') == b'GNU':
                        return ''.join('%02x' % b for b in bytearray(desc))
    except (IOError, OSError, struct.error):
        return None
    return None


class MapsReader(object):
    """The files a process maps, with their build ids (cached by device and
    inode, so each file is read once however many processes map it)."""

    def __init__(self):
        self.cache = {}

    def mapped(self, pid):
        """[(path, build id or None)] of the files PID maps; [] when its
        maps cannot be read."""
        try:
            with open('/proc/%d/maps' % pid) as f:
                lines = f.read().splitlines()
        except (IOError, OSError):
            return []
        seen = set()
        found = []
        for line in lines:
            parts = line.split(None, 5)
            if len(parts) < 6 or parts[4] == '0' or not parts[5].startswith('/'):
                continue
            path = parts[5]
            if path.endswith(' (deleted)'):
                continue
            key = (parts[3], parts[4])
            if key in seen:
                continue
            seen.add(key)
            if key not in self.cache:
                bid = elf_build_id('/proc/%d/root%s' % (pid, path))
                if bid is None:
                    bid = elf_build_id(path)
                self.cache[key] = bid
            found.append((path, self.cache[key]))
        return found

    def maps_build(self, pid, build_id):
        return any(bid == build_id for _path, bid in self.mapped(pid))

    def maps_other_build(self, pid, name, build_id):
        """Whether PID maps a file named like NAME (the container's target)
        with another build id."""
        stem = os.path.basename(name)
        for path, bid in self.mapped(pid):
            base = os.path.basename(path)
            if (base == stem or base.startswith(stem + '.')) and bid != build_id:
                return True
        return False
