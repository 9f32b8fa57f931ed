"""python -m steadyflow"""

from steadyflow.cli.main import app

app(prog_name="steadyflow")
