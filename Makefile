# The few commands people use. Everything provisions itself through bin/courier.
.PHONY: run test lint format bench services stop

run:      ## run web + worker + beat on the embedded default (Ctrl-C stops all)
	bin/courier run

test:     ## provision PostgreSQL/Redis if needed and run the whole test suite
	bin/courier test

lint:     ## ruff lint and format check
	.venv/bin/ruff check . && .venv/bin/ruff format --check .

format:
	.venv/bin/ruff format . && .venv/bin/ruff check --fix .

bench:    ## run every benchmark (python -m bench --list shows them)
	eval "$$(bin/courier env)" && .venv/bin/python -m bench all

services: ## start the embedded PostgreSQL and Redis and print their URLs
	bin/courier services

stop:     ## stop the embedded PostgreSQL and Redis
	bin/courier stop
