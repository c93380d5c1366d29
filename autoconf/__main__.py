from autoconf.cli import run

run()
