# Every target that runs code depends on `venv`, which builds .venv from nothing once.
PY := .venv/bin/python
PIP_FLAGS := -q --disable-pip-version-check -c constraints.txt

.PHONY: venv demo test lint ui dashboard report weekly bench clean

venv: .venv/.installed

# pip's own output goes to .venv/install.log (shown only when the install fails)
.venv/.installed: pyproject.toml constraints.txt
	@echo "setting up .venv (first run: a few minutes) ..."
	@test -x $(PY) || python3 -m venv .venv
	@($(PY) -m pip install $(PIP_FLAGS) --upgrade pip && $(PY) -m pip install $(PIP_FLAGS) -e '.[dev]') \
		> .venv/install.log 2>&1 || (tail -30 .venv/install.log; echo "pip install failed: .venv/install.log"; exit 1)
	@touch $@

demo: venv
	@$(PY) -m studies.run tiling_overlap_sweep
	@$(PY) -m reports.kpi --out reports/out/kpi.html
	@echo
	@echo "Done. The study is in mlruns/optuna/journal.log, its runs in mlruns/mlflow.db."
	@echo "  Browse the runs:      make ui        (open the experiment link it prints: the training view)"
	@echo "  Browse the study:     make dashboard (optuna-dashboard on http://127.0.0.1:8080)"
	@echo "  Weekly KPI report:    reports/out/kpi.html (the demo fills 2 of its KPIs; make weekly fills them all)"
	@echo "  Replay a trial's run: .venv/bin/python -m tracking.replay RUN_ID   (diff two runs: python -m tracking.diff A B)"

test: venv
	$(PY) -m ruff check .
	$(PY) -m pytest -q -n 2 --dist loadgroup --durations=15

weekly: venv
	@$(PY) -m reports.weekly

report: venv
	$(PY) -m reports.kpi --out reports/out/kpi.html

ui: venv
	$(PY) -m tracking.ui

dashboard: venv
	$(PY) -m studies.dashboard

lint: venv
	$(PY) -m ruff check .

clean:
	rm -rf .venv build *.egg-info
