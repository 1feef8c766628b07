.PHONY: run test lint bench

# Start the portal on the embedded default (SQLite, file-system broker): web server and worker.
run:
	./scripts/run

# Run the whole test suite (needs root: installs packages, starts Redis, PostgreSQL and SSH test hosts).
test:
	./scripts/test

lint:
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .
	.venv/bin/ansible-lint --offline --profile production ansible/

bench:
	.venv/bin/python -m bench
