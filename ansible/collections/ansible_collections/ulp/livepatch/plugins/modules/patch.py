#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: ulp contributors
# GNU General Public License v2.0 or later (see https://www.gnu.org/licenses/old-licenses/gpl-2.0.txt)

from __future__ import absolute_import, division, print_function
__metaclass__ = type

DOCUMENTATION = r'''
---
module: patch
short_description: Apply or revert userspace live patches in running processes
version_added: "0.1.0"
description:
  - Applies a live-patch container to the processes that run its target
    library, or reverts it, with C(ulp trigger --json), without restarting
    them.
  - Asks C(ulp check --json) first, so that a patch already applied (or
    already reverted) is left alone and reported with C(changed=false).
  - Processes must have the live-patching runtime C(libpulp.so.0) loaded
    (started with C(LD_PRELOAD)), or O(load_runtime) must be set.
author:
  - ulp contributors (!UNKNOWN)
options:
  container:
    description:
      - Path of the live-patch container on the managed host, or a glob of
        containers (applied in byte order of their paths).
      - A glob that matches no file fails.
      - Required unless O(state=reverted) with O(revert_all).
    type: str
  state:
    description:
      - V(applied) applies the containers where they are not applied yet.
      - V(reverted) reverts them where they are applied; with O(revert_all)
        and no O(container), reverts every patch of that library.
    type: str
    choices: [applied, reverted]
    default: applied
  pid:
    description:
      - The processes to work on, a pid or a list of pids.
      - By default every process that maps the container's target library
        (the build the container is for) and has the runtime (or, with
        O(load_runtime), every process that maps it).
    type: list
    elements: int
  load_runtime:
    description:
      - Load the runtime into processes started without it first
        (C(ulp trigger --load-runtime)).
    type: bool
    default: false
  revert_all:
    description:
      - Name (or loader path) of a library whose patches are all reverted
        (C(ulp trigger --revert-all=LIB)). Only with O(state=reverted).
      - With a O(container), replaces the library's patches by the container
        in one stop of each process (C(--revert-all=LIB CONTAINER)); V(target)
        means the container's own target library.
    type: str
  retries:
    description:
      - How many more times to try when a thread executes the bytes to
        change (C(ulp trigger -r)).
    type: int
  timeout:
    description:
      - Bound, in seconds, of the whole operation in one process
        (C(ulp trigger --timeout)).
    type: int
  ulp:
    description:
      - The ulp binary, a path or a name looked up on the PATH.
    type: str
    default: ulp
notes:
  - Needs ptrace rights on the target processes (run as root, C(become)).
  - In check mode nothing is attached or changed; the results say
    C(would apply) or C(would revert) where a run would change a process.
seealso:
  - module: ulp.livepatch.info
attributes:
  check_mode:
    support: full
    description: Reports what would change and changes nothing.
  diff_mode:
    support: none
    description: No diff is produced.
'''

EXAMPLES = r'''
- name: Apply a live patch to every process running its target library
  ulp.livepatch.patch:
    container: /usr/lib/pulp/fix_CVE-2026-0001.so
  become: true

- name: Apply every container of a directory to two processes
  ulp.livepatch.patch:
    container: "/usr/lib/pulp/*.so"
    pid: [4242, 4243]

- name: Load the runtime into processes started without it, then patch
  ulp.livepatch.patch:
    container: /usr/lib/pulp/fix.so
    load_runtime: true
    retries: 3
    timeout: 10

- name: Revert a live patch
  ulp.livepatch.patch:
    container: /usr/lib/pulp/fix.so
    state: reverted

- name: Revert every patch of a library
  ulp.livepatch.patch:
    revert_all: libfoo.so.1
    state: reverted

- name: Replace the patches of a library by a newer container
  ulp.livepatch.patch:
    revert_all: libfoo.so.1
    container: /usr/lib/pulp/fix2.so
    state: reverted
'''

RETURN = r'''
results:
  description:
    - One entry per process and container (per process for O(revert_all)
      alone), in pid order.
  returned: always
  type: list
  elements: dict
  contains:
    pid:
      description: The process id.
      type: int
      sample: 4242
    name:
      description: The process name (/proc/PID/comm).
      type: str
      sample: demo_prog
    container:
      description: The container as given to ulp (null for O(revert_all) alone).
      type: str
      sample: /usr/lib/pulp/fix.so
    status:
      description:
        - ulp's status word, V(SUCCESS), V(SKIPPED) or V(ERROR); in check
          mode V(would apply) or V(would revert) where a run would change
          the process.
      type: str
      sample: SUCCESS
    reason:
      description: Why it was skipped or failed (ulp's reason), else null.
      type: str
      sample: Patch already applied
summary:
  description: Processes counted as ulp counts them (failed if any result failed, else patched if any changed it, else skipped).
  returned: always
  type: dict
  contains:
    patched:
      description: Processes changed (in check mode, that would change).
      type: int
    skipped:
      description: Processes left as they were.
      type: int
    failed:
      description: Processes with an ERROR.
      type: int
  sample: {"patched": 1, "skipped": 0, "failed": 0}
'''

import glob
import os

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.ulp.livepatch.plugins.module_utils.ulp_json import (
    MapsReader, all_pids, find_ulp, process_name, run_json)

GLOB_CHARS = ('*', '?', '[')

# ulp trigger --json result statuses, as the status words of its text.
STATUS_WORDS = {
    'applied': 'SUCCESS',
    'reverted': 'SUCCESS',
    'already_applied': 'SKIPPED',
    'not_applicable': 'SKIPPED',
    'failed': 'ERROR',
}


def expand(module, pattern):
    """The containers PATTERN names, in byte order of their paths."""
    if any(c in pattern for c in GLOB_CHARS):
        found = sorted(glob.glob(pattern), key=lambda p: p.encode('utf-8', 'surrogateescape'))
        found = [p for p in found if os.path.isfile(p)]
        if not found:
            module.fail_json(msg="container pattern '%s' matches no file" % pattern)
        return found
    if not os.path.isfile(pattern):
        module.fail_json(msg="container '%s' does not exist" % pattern)
    return [pattern]


def entry(pid, name, container, status, reason):
    return {'pid': pid, 'name': name, 'container': container, 'status': status, 'reason': reason}


class Patcher(object):
    def __init__(self, module):
        self.module = module
        p = module.params
        self.ulp = find_ulp(module, p['ulp'])
        self.apply = p['state'] == 'applied'
        self.library = p['revert_all']
        self.pids = p['pid']
        self.load_runtime = p['load_runtime']
        self.maps = MapsReader()
        self.results = []
        self.containers = expand(module, p['container']) if p['container'] else []
        self.targets = {}
        for c in self.containers:
            self.targets[c] = self.target_of(c)
        self.runtime = self.runtime_processes()

    def target_of(self, container):
        """(library name, build id) the container is for (ulp dump)."""
        rc, doc, err = run_json(self.module, self.ulp, ['dump', container])
        if rc != 0 or not isinstance(doc, dict) or 'build_id' not in doc:
            self.module.fail_json(msg="ulp dump %s failed: %s" % (container, (doc or {}).get('error') or err))
        return doc.get('name'), doc['build_id']

    def runtime_processes(self):
        """{pid: process} of `ulp patches --json`: those with the runtime."""
        rc, doc, err = run_json(self.module, self.ulp, ['patches'])
        if not isinstance(doc, dict) or 'processes' not in doc:
            self.module.fail_json(msg="ulp patches failed: %s" % err)
        return dict((p['pid'], p) for p in doc['processes'])

    def trigger_options(self):
        opts = []
        p = self.module.params
        if p['retries'] is not None:
            opts += ['-r', str(p['retries'])]
        if p['timeout'] is not None:
            opts += ['--timeout', str(p['timeout'])]
        if self.load_runtime:
            opts.append('--load-runtime')
        return opts

    def candidates(self):
        """The pids to work on: those given, else the processes that run a
        container's target (with the runtime, or any with load_runtime)."""
        if self.pids:
            return sorted(set(self.pids))
        if not self.containers:
            return sorted(pid for pid, proc in self.runtime.items() if self.library_entry(proc) is not None)
        builds = set(bid for _name, bid in self.targets.values())
        found = []
        for pid in all_pids():
            if pid == os.getpid() or (pid not in self.runtime and not (self.load_runtime and self.apply)):
                continue
            if any(self.maps.maps_build(pid, bid) for bid in builds):
                found.append(pid)
        return found

    def library_entry(self, proc):
        """The library of process PROC named by revert_all, or None."""
        for lib in proc.get('libraries') or []:
            path = lib.get('path') or ''
            if self.library in (path, os.path.basename(path)):
                return lib
        return None

    def check(self, pid, container):
        """'applied', 'not_applied', 'no_runtime' or ('error', MESSAGE)."""
        rc, doc, err = run_json(self.module, self.ulp, ['check', '-p', str(pid), container])
        if isinstance(doc, dict) and 'applied' in doc:
            return 'applied' if doc['applied'] else 'not_applied'
        if isinstance(doc, dict) and doc.get('runtime') is False:
            return 'no_runtime'
        return ('error', (doc or {}).get('error') or err or 'ulp check exited %d' % rc)

    def run(self):
        for pid in self.candidates():
            name = process_name(pid)
            if name is None:
                self.results.append(entry(pid, None, None, 'ERROR', 'no process %d exists' % pid))
                continue
            if self.containers:
                self.by_containers(pid, name)
            else:
                self.revert_library(pid, name)

    def by_containers(self, pid, name):
        todo = []
        for c in self.containers:
            state = self.check(pid, c)
            if isinstance(state, tuple):
                self.results.append(entry(pid, name, c, 'ERROR', state[1]))
            elif self.apply or self.library:
                if state == 'applied':
                    self.results.append(entry(pid, name, c, 'SKIPPED', 'Patch already applied'))
                else:
                    todo.append((c, state))
            elif state == 'applied':
                todo.append((c, state))
            else:
                self.results.append(entry(pid, name, c, 'SKIPPED', 'Patch not applied'))
        if not todo:
            return
        if self.module.check_mode:
            for c, state in todo:
                self.results.append(self.would(pid, name, c, state))
            return
        args = ['trigger', '-p', str(pid)] + self.trigger_options()
        if self.library:
            args.append('--revert-all=%s' % self.library)
        elif not self.apply:
            args.append('--revert')
        self.trigger(pid, name, args + [c for c, _state in todo])

    def would(self, pid, name, container, state):
        """What a run would do with CONTAINER in PID (check mode)."""
        if not self.apply and not self.library:
            return entry(pid, name, container, 'would revert', None)
        target, build = self.targets[container]
        if state == 'no_runtime' and not self.load_runtime:
            return entry(pid, name, container, 'SKIPPED', 'Libpulp not found in target process')
        if self.maps.maps_build(pid, build):
            return entry(pid, name, container, 'would apply', None)
        if self.maps.maps_other_build(pid, target, build):
            return entry(pid, name, container, 'SKIPPED', "Build ID mismatch: the patch is for %s" % build)
        return entry(pid, name, container, 'SKIPPED', "Target library not loaded: library '%s' is not loaded" % target)

    def revert_library(self, pid, name):
        proc = self.runtime.get(pid)
        lib = self.library_entry(proc) if proc else None
        if proc is None:
            self.results.append(entry(pid, name, None, 'SKIPPED', 'No patches installed: the process has no live-patching runtime'))
        elif lib is None:
            self.results.append(entry(pid, name, None, 'SKIPPED', "Target library not loaded: library '%s' is not loaded" % self.library))
        elif not lib.get('patches'):
            self.results.append(entry(pid, name, None, 'SKIPPED', 'No patches installed'))
        elif self.module.check_mode:
            self.results.append(entry(pid, name, None, 'would revert', None))
        else:
            args = ['trigger', '-p', str(pid)] + self.trigger_options() + ['--revert-all=%s' % self.library]
            self.trigger(pid, name, args)

    def trigger(self, pid, name, args):
        rc, doc, err = run_json(self.module, self.ulp, args)
        if not isinstance(doc, dict) or 'processes' not in doc:
            message = (doc or {}).get('error') or err or 'ulp trigger exited %d' % rc
            self.results.append(entry(pid, name, None, 'ERROR', message))
            return
        for proc in doc['processes']:
            for r in proc.get('results') or []:
                status = STATUS_WORDS.get(r.get('status'), 'ERROR')
                self.results.append(entry(proc['pid'], proc.get('name'), r.get('patch'), status, r.get('reason')))
        for e in doc.get('errors') or []:
            self.results.append(entry(e.get('pid', pid), name, None, 'ERROR', e.get('error')))
        if not doc['processes'] and not doc.get('errors') and rc != 0:
            self.results.append(entry(pid, name, None, 'ERROR', err or 'ulp trigger exited %d' % rc))

    def summary(self):
        per_pid = {}
        for r in self.results:
            worst = per_pid.get(r['pid'], 'skipped')
            if r['status'] == 'ERROR':
                worst = 'failed'
            elif r['status'] != 'SKIPPED' and worst != 'failed':
                worst = 'patched'
            per_pid[r['pid']] = worst
        counts = {'patched': 0, 'skipped': 0, 'failed': 0}
        for v in per_pid.values():
            counts[v] += 1
        return counts


def main():
    module = AnsibleModule(
        argument_spec=dict(
            container=dict(type='str'),
            state=dict(type='str', default='applied', choices=['applied', 'reverted']),
            pid=dict(type='list', elements='int'),
            load_runtime=dict(type='bool', default=False),
            revert_all=dict(type='str'),
            retries=dict(type='int'),
            timeout=dict(type='int'),
            ulp=dict(type='str', default='ulp'),
        ),
        required_if=[('state', 'applied', ('container',))],
        supports_check_mode=True,
    )
    p = module.params
    if p['revert_all'] is not None and p['state'] != 'reverted':
        module.fail_json(msg='revert_all is only valid with state=reverted')
    if p['state'] == 'reverted' and not p['container'] and not p['revert_all']:
        module.fail_json(msg='state=reverted needs container or revert_all')
    if p['revert_all'] == 'target' and not p['container']:
        module.fail_json(msg='revert_all=target needs a container')

    patcher = Patcher(module)
    patcher.run()
    results = patcher.results
    summary = patcher.summary()
    changed = any(r['status'] in ('SUCCESS', 'would apply', 'would revert') for r in results)
    errors = [r for r in results if r['status'] == 'ERROR']
    if errors:
        reasons = '; '.join('%s (pid %s)%s: %s' % (
            r['name'], r['pid'], ' ' + r['container'] if r['container'] else '', r['reason']) for r in errors)
        module.fail_json(msg='live patching failed in %d process(es): %s' % (summary['failed'], reasons),
                         changed=changed, results=results, summary=summary)
    module.exit_json(
        changed=changed, results=results, summary=summary,
        msg='patched: %d, skipped: %d, failed: 0' % (summary['patched'], summary['skipped']))


if __name__ == '__main__':
    main()
