#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: ulp contributors
# GNU General Public License v2.0 or later (see https://www.gnu.org/licenses/old-licenses/gpl-2.0.txt)

from __future__ import absolute_import, division, print_function
__metaclass__ = type

DOCUMENTATION = r'''
---
module: info
short_description: Gather the live patches applied on a host as facts
version_added: "0.1.0"
description:
  - Runs C(ulp patches --json) and sets its answer as the fact
    C(ulp_patches) - the processes with the live-patching runtime, their
    live-patchable libraries and the patches applied to each, and the
    processes that still run an unpatched copy of a library patched
    elsewhere on the host, with why.
author:
  - ulp contributors (!UNKNOWN)
options:
  pid:
    description:
      - Only this process (C(ulp patches -p PID)); by default every process
        with the runtime.
    type: int
  only_livepatched:
    description:
      - Keep only the libraries with patches and the processes that have
        some (C(ulp patches --only-livepatched)); C(unpatched) is then empty.
    type: bool
    default: false
  ulp:
    description:
      - The ulp binary, a path or a name looked up on the PATH.
    type: str
    default: ulp
notes:
  - Needs the rights to read the processes (run as root, C(become)).
seealso:
  - module: ulp.livepatch.patch
attributes:
  check_mode:
    support: full
    description: Reads only; runs the same in check mode.
  diff_mode:
    support: none
    description: No diff is produced.
  facts:
    support: full
    description: Sets C(ulp_patches).
'''

EXAMPLES = r'''
- name: Gather the live patches of every process
  ulp.livepatch.info:
  become: true

- name: Show which processes run a patched library without its patches
  ansible.builtin.debug:
    var: ansible_facts.ulp_patches.unpatched

- name: The containers applied in each process
  ansible.builtin.debug:
    msg: "{{ item.pid }} {{ item.name }}: {{ item.libraries | map(attribute='patches') | flatten | map(attribute='container') | list }}"
  loop: "{{ ansible_facts.ulp_patches.processes }}"
'''

RETURN = r'''
ansible_facts:
  description: Facts set by the module.
  returned: always
  type: complex
  contains:
    ulp_patches:
      description: The answer of C(ulp patches --json) (see ulp's README, "patches --json").
      type: complex
      contains:
        processes:
          description:
            - Processes with the runtime - C(pid), C(name), C(state) and C(libraries),
              each library with C(path), C(build_id) and C(patches) (C(container),
              C(container_path), C(patch_id), C(applied_at), C(bug_labels)).
          type: list
          elements: dict
        unpatched:
          description:
            - Processes that map a library build patched in some process without
              all of its patches - C(pid), C(name), C(library), C(build_id),
              C(reason), C(message).
          type: list
          elements: dict
        patched:
          description: "Per process, the containers applied: C({pid, name, containers})."
          type: list
          elements: dict
        unreadable_processes:
          description: How many processes could not be read to tell.
          type: int
        warnings:
          description: ulp's warnings.
          type: list
          elements: dict
        errors:
          description: ulp's errors.
          type: list
          elements: dict
'''

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.ulp.livepatch.plugins.module_utils.ulp_json import find_ulp, run_json


def main():
    module = AnsibleModule(
        argument_spec=dict(
            pid=dict(type='int'),
            only_livepatched=dict(type='bool', default=False),
            ulp=dict(type='str', default='ulp'),
        ),
        supports_check_mode=True,
    )
    ulp = find_ulp(module, module.params['ulp'])
    args = ['patches']
    if module.params['pid'] is not None:
        args += ['-p', str(module.params['pid'])]
    if module.params['only_livepatched']:
        args.append('--only-livepatched')
    rc, doc, err = run_json(module, ulp, args)
    if not isinstance(doc, dict) or 'processes' not in doc:
        module.fail_json(msg='ulp patches failed (exit %d): %s' % (rc, (doc or {}).get('error') or err))
    if rc != 0:
        reasons = [e.get('error') or e.get('warning') for e in (doc.get('errors') or []) + (doc.get('warnings') or [])]
        module.fail_json(msg='ulp patches failed (exit %d): %s' % (rc, '; '.join(r for r in reasons if r) or err))
    patched = []
    for proc in doc['processes']:
        containers = [p.get('container') for lib in proc.get('libraries') or [] for p in lib.get('patches') or []]
        patched.append({'pid': proc.get('pid'), 'name': proc.get('name'), 'containers': containers})
    facts = {
        'processes': doc['processes'],
        'unpatched': doc.get('unpatched') or [],
        'patched': patched,
        'unreadable_processes': doc.get('unreadable_processes', 0),
        'warnings': doc.get('warnings') or [],
        'errors': doc.get('errors') or [],
    }
    module.exit_json(changed=False, ansible_facts={'ulp_patches': facts})


if __name__ == '__main__':
    main()
