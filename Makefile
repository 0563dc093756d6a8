# Thin aliases for tasks.py, which needs nothing but Python and pip.
.PHONY: setup main test bench
setup:
	python3 tasks.py setup
main:
	python3 tasks.py main
test:
	python3 tasks.py test
bench:
	python3 tasks.py bench
