"""python -m steadyflow"""

from steadyflow.cli.main import entry

entry()
