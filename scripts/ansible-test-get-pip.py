"""Stands in for the pip bootstrap script ansible-test downloads from
ci-files.testing.ansible.com (unreachable where only package registries
are): installs pip into ansible-test's fresh virtual environment with
ensurepip, then the packages ansible-test asks for, from PyPI.
`make ansible-sanity` puts it where ansible-test looks for its cached copy.
"""
import subprocess
import sys

args = [a for a in sys.argv[1:] if a not in ('--no-setuptools', '--no-wheel')]
subprocess.check_call([sys.executable, '-m', 'ensurepip', '--default-pip'])
subprocess.check_call([sys.executable, '-m', 'pip', 'install', '-q'] + args)
