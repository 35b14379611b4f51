from nstjax.cli import run

run()
