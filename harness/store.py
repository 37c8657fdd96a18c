"""The DuckDB store: schema, record ingest, the queries behind the leaderboard and the
dashboard, CSV export.

The only module that knows SQL (the leaderboard's statistics are pandas, harness/leaderboard.py).
Writers hold the database file only for one short transaction at a time (DuckDB lets a single
process open a file read-write), so the dashboard and `harness status` can read between a
sweep's writes; both sides retry while the other holds it. Long format (one row per metric) so
new metrics need no migration.

Why over 400 lines: keeping all SQL in one module is the point of it (the dashboard and the CLI
hold none); what is not SQL moved to harness/leaderboard.py.
"""
from __future__ import annotations

import contextlib
import json
import math
import time
from pathlib import Path
from typing import Callable, Iterable

import duckdb
import pandas as pd

from harness import files
from harness import leaderboard as boards
from harness.records import DEFAULT_STORE, RUNS_DIR, RunRecord

SCHEMA_VERSION = 1
DEFAULT_DB = DEFAULT_STORE
LOCK_WAIT_S = 30.0

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key VARCHAR PRIMARY KEY, value VARCHAR);
CREATE TABLE IF NOT EXISTS runs (
    run_id VARCHAR PRIMARY KEY, sweep VARCHAR, matrix VARCHAR, model VARCHAR, method VARCHAR,
    task VARCHAR, seed INTEGER, config JSON, status VARCHAR, primary_metric VARCHAR,
    error VARCHAR, traceback VARCHAR, started_at TIMESTAMP, finished_at TIMESTAMP,
    host VARCHAR, versions JSON, node VARCHAR, processes INTEGER DEFAULT 1);
CREATE TABLE IF NOT EXISTS matrix_runs (matrix VARCHAR, run_id VARCHAR, PRIMARY KEY (matrix, run_id));
CREATE TABLE IF NOT EXISTS metrics (
    run_id VARCHAR, kind VARCHAR, name VARCHAR, split VARCHAR, value DOUBLE, stderr DOUBLE);
CREATE TABLE IF NOT EXISTS curves (
    run_id VARCHAR, step INTEGER, epoch DOUBLE, loss DOUBLE, eval_loss DOUBLE, lr DOUBLE);
CREATE TABLE IF NOT EXISTS samples (
    run_id VARCHAR, idx INTEGER, input VARCHAR, reference VARCHAR, prediction VARCHAR);
CREATE TABLE IF NOT EXISTS items (
    run_id VARCHAR, split VARCHAR, metric VARCHAR, item_id VARCHAR, value DOUBLE, prediction VARCHAR,
    confidence DOUBLE, weight DOUBLE);
CREATE TABLE IF NOT EXISTS item_texts (item_id VARCHAR PRIMARY KEY, input VARCHAR, reference VARCHAR);
CREATE TABLE IF NOT EXISTS probe_baseline_items (
    model VARCHAR, probe VARCHAR, config_hash VARCHAR, item_id VARCHAR, value DOUBLE, weight DOUBLE);
CREATE TABLE IF NOT EXISTS weight_updates (
    run_id VARCHAR, module VARCHAR, kind VARCHAR, rows INTEGER, cols INTEGER, base_norm DOUBLE,
    update_norm DOUBLE, relative DOUBLE, effective_rank INTEGER, singular_values DOUBLE[], head BOOLEAN);
CREATE TABLE IF NOT EXISTS trajectory (
    run_id VARCHAR, step INTEGER, fraction DOUBLE, kind VARCHAR, name VARCHAR, split VARCHAR, value DOUBLE,
    stderr DOUBLE);
CREATE TABLE IF NOT EXISTS attempts (
    run_id VARCHAR PRIMARY KEY, sweep VARCHAR, status VARCHAR, error VARCHAR, traceback VARCHAR,
    started_at TIMESTAMP, finished_at TIMESTAMP, host VARCHAR);
CREATE TABLE IF NOT EXISTS probe_baselines (
    model VARCHAR, probe VARCHAR, config_hash VARCHAR, value DOUBLE, stderr DOUBLE,
    metric VARCHAR, higher_is_better BOOLEAN, computed_at TIMESTAMP,
    PRIMARY KEY (model, probe, config_hash));
"""
# Columns runs gained after stores were first written (added when a store is opened for writing;
# a store not written since reads as if they held the record's defaults).
RUN_COLUMNS_ADDED = {"node": ("VARCHAR", None), "processes": ("INTEGER DEFAULT 1", 1)}
# Columns probe_baselines gained after stores were first written (added on the first write).
PROBE_BASELINE_COLUMNS = {"metric": "VARCHAR", "higher_is_better": "BOOLEAN", "computed_at": "TIMESTAMP"}

ITEM_COLUMNS = ("run_id", "split", "metric", "item_id", "value", "prediction", "confidence", "weight")
TRAJECTORY_COLUMNS = ("step", "fraction", "kind", "name", "split", "value", "stderr")
UPDATE_COLUMNS = ("module", "kind", "rows", "cols", "base_norm", "update_norm", "relative", "effective_rank",
                  "singular_values", "head")
RUN_COLUMNS = ("run_id", "sweep", "matrix", "model", "method", "task", "seed", "config", "status",
               "primary_metric", "error", "traceback", "started_at", "finished_at", "host", "versions",
               *RUN_COLUMNS_ADDED)

class StoreError(RuntimeError):
    pass


class ExportIncomplete(StoreError):
    """`export` wrote `written` but skipped what `skipped` names (names unsafe as file names)."""

    def __init__(self, written: list[Path], skipped: list[str]):
        self.written, self.skipped = written, skipped
        super().__init__("\n".join(skipped))


class StoreBusy(StoreError):
    """Another process (a sweep writing, an ingest) held the file for longer than `lock_wait_s`."""


class StoreDamaged(StoreError):
    """The file is damaged (cut short, a block overwritten): rebuild it from the run records."""


# How DuckDB words a damaged file: cut short ("Could not read enough bytes"), a block that fails
# its checksum ("Corrupt database file"), or a database it gave up on after such an error.
DAMAGE_SIGNS = ("could not read enough bytes", "corrupt", "checksum", "invalidated")


# Order of run states where failures should come first (the sweep status view).
STATE_ORDER = ("failed", "interrupted", "running", "pending", "done")


class Store:
    lock_wait_s: float = LOCK_WAIT_S  # how long to retry while another process holds the file

    def __init__(self, path: str | Path = DEFAULT_DB):
        self.path = Path(path)
        self._held = None  # the connection `reading()` holds, which every query then uses

    # ----------------------------------------------------------------- connections

    @contextlib.contextmanager
    def _connect(self, read_only: bool = False):
        if read_only and not self.path.exists():
            raise StoreError(f"no store at {self.path}: run `harness sweep MATRIX` first")
        if not read_only:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        con = self._open(read_only)
        try:
            if read_only:
                self._check_version(con)
            else:
                self._ensure_schema(con)
            yield con
        except duckdb.Error as err:
            damaged = self._damaged(err)
            if damaged is None:
                raise
            raise damaged from err
        finally:
            with contextlib.suppress(duckdb.Error):  # a damaged file may refuse even this
                con.close()

    def _open(self, read_only: bool):
        deadline = time.monotonic() + self.lock_wait_s
        while True:
            try:
                return duckdb.connect(str(self.path), read_only=read_only)
            except duckdb.Error as err:
                if not isinstance(err, duckdb.IOException) or "lock" not in str(err).lower():
                    raise self._damaged(err) or StoreError(f"cannot open {self.path} as a harness store: {err}") from err
                if time.monotonic() > deadline:
                    raise StoreBusy(f"{self.path} is busy (another process holds it): {err}") from err
                time.sleep(0.1)

    def _damaged(self, err: duckdb.Error) -> StoreDamaged | None:
        """A StoreDamaged saying how to rebuild the store, if `err` says the file is damaged."""
        text = " ".join(str(err).split())
        if not any(sign in text.lower() for sign in DAMAGE_SIGNS):
            return None
        rebuilt = self.path.with_name(f"{self.path.stem}-rebuilt{self.path.suffix}")
        return StoreDamaged(
            f"the store {self.path} is damaged ({text}). Its runs are in their record.json files: rebuild it "
            f"into a new file with `harness ingest {self.path.parent / RUNS_DIR} --db {rebuilt}`, then replace "
            f"{self.path} by {rebuilt}")

    def _ensure_schema(self, con) -> None:
        con.execute(SCHEMA)
        for column, (sql_type, _) in RUN_COLUMNS_ADDED.items():
            con.execute(f"ALTER TABLE runs ADD COLUMN IF NOT EXISTS {column} {sql_type}")
        found = con.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        if found is None:
            con.execute("INSERT INTO meta VALUES ('schema_version', ?)", [str(SCHEMA_VERSION)])
        elif int(found[0]) > SCHEMA_VERSION:
            raise StoreError(f"{self.path} was written by a newer harness (schema {found[0]} > {SCHEMA_VERSION})")

    def _check_version(self, con) -> None:
        try:
            found = con.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        except duckdb.CatalogException:
            found = None
        if found is None or int(found[0]) != SCHEMA_VERSION:
            raise StoreError(
                f"{self.path} has store schema {found[0] if found else 'unknown'}, this harness reads "
                f"{SCHEMA_VERSION}: rebuild it with `harness ingest results/runs --db {self.path}`"
            )

    # ----------------------------------------------------------------- writes

    def write_record(self, record: RunRecord) -> None:
        """Upsert a run and replace its rows (and any failed re-run attempt it supersedes), in one
        transaction: a run is `done` in the store only once all its metrics, curves and samples
        are in."""
        with self._connect() as con:
            con.execute("BEGIN TRANSACTION")
            try:
                for table in ("metrics", "curves", "samples", "items", "weight_updates", "trajectory", "attempts"):
                    con.execute(f"DELETE FROM {table} WHERE run_id = ?", [record.run_id])
                self._upsert_run(con, record)
                _insert(con, "metrics", [
                    [record.run_id, m["kind"], m["name"], m["split"], _finite(m["value"]), _finite(m["stderr"])]
                    for m in record.metrics])
                _insert(con, "curves", [
                    [record.run_id, c["step"], c["epoch"], _finite(c["loss"]), _finite(c["eval_loss"]), c["lr"]]
                    for c in record.curves])
                _insert(con, "samples", [
                    [record.run_id, s["idx"], s["input"], s["reference"], s["prediction"]] for s in record.samples])
                _insert_items(con, [record])
                _insert_arrow(con, "weight_updates", _update_rows([record]))
                _insert_arrow(con, "trajectory", _trajectory_rows([record]))
                con.execute("COMMIT")
            except BaseException:
                _rollback(con)
                raise

    def _upsert_run(self, con, record: RunRecord) -> None:
        row = record.to_dict()
        row["config"] = json.dumps(row["config"], default=str)
        row["versions"] = json.dumps(row["versions"])
        placeholders = ", ".join("?" for _ in RUN_COLUMNS)
        updates = ", ".join(f"{c} = excluded.{c}" for c in RUN_COLUMNS if c not in ("run_id", "matrix", "sweep"))
        con.execute(
            f"INSERT INTO runs ({', '.join(RUN_COLUMNS)}) VALUES ({placeholders}) "
            f"ON CONFLICT (run_id) DO UPDATE SET {updates}",
            [row[c] for c in RUN_COLUMNS],
        )
        con.execute("INSERT OR IGNORE INTO matrix_runs VALUES (?, ?)", [record.matrix, record.run_id])

    def write_attempts(self, records: Iterable[RunRecord]) -> None:
        """Keep forced re-runs of done runs that did not end done (their status, error,
        traceback, times) beside the runs' done results, which they leave as they are; one
        per run, the latest. `write_record` of a new result removes a run's attempt."""
        rows = [[r.run_id, r.sweep, r.status, r.error, r.traceback, r.started_at, r.finished_at, r.host]
                for r in records]
        with self._connect() as con:
            _insert(con, "attempts", rows, verb="INSERT OR REPLACE")

    def put_probe_baseline(self, model: str, probe: str, config_hash: str, value: float, stderr: float | None,
                           *, metric: str, higher_is_better: bool) -> None:
        """Set the base model's score on a probe (harness/probes/), keyed by the model's
        canonical reference, the probe and the hash of the probe's config, replacing any."""
        self._write_baselines([{"model": model, "probe": probe, "config_hash": config_hash, "value": value,
                                "stderr": stderr, "metric": metric, "higher_is_better": higher_is_better}],
                              "INSERT OR REPLACE")

    def add_probe_baselines(self, rows: list[dict]) -> None:
        """Base scores computed by runs ({model, probe, config_hash, value, stderr, metric,
        higher_is_better}), in one transaction; the first score stored for a key is kept (a
        base score is a function of its key: a second one is the same measurement again)."""
        if rows:
            self._write_baselines(rows, "INSERT OR IGNORE")

    def _write_baselines(self, rows: list[dict], verb: str) -> None:
        with self._connect() as con:
            for column, sql_type in PROBE_BASELINE_COLUMNS.items():
                con.execute(f"ALTER TABLE probe_baselines ADD COLUMN IF NOT EXISTS {column} {sql_type}")
            con.executemany(
                f"{verb} INTO probe_baselines (model, probe, config_hash, value, stderr, metric, "
                "higher_is_better, computed_at) VALUES (?, ?, ?, ?, ?, ?, ?, now()::TIMESTAMP)",
                [[r["model"], r["probe"], r["config_hash"], _finite(r["value"]), _finite(r["stderr"]), r["metric"],
                  r["higher_is_better"]] for r in rows])
            for r in rows:
                if r.get("items"):
                    _write_baseline_items(con, r, replace=verb == "INSERT OR REPLACE")

    def get_probe_baseline(self, model: str, probe: str, config_hash: str) -> dict | None:
        """The cached base score {value, stderr, metric, higher_is_better}, or None."""
        if not self.path.exists():
            return None
        df = self.query("SELECT * FROM probe_baselines WHERE model = ? AND probe = ? AND config_hash = ?",
                        [model, probe, config_hash])
        if df.empty:
            return None
        row = df.iloc[0].to_dict()
        out = {key: (None if _missing(row.get(key)) else row.get(key))
               for key in ("value", "stderr", "metric", "higher_is_better")}
        if out["value"] is None:
            return None
        out["value"] = float(out["value"])
        out["stderr"] = None if out["stderr"] is None else float(out["stderr"])
        out["higher_is_better"] = None if out["higher_is_better"] is None else bool(out["higher_is_better"])
        return out

    def probe_baselines(self) -> pd.DataFrame:
        """Every cached base score."""
        return self.query("SELECT * FROM probe_baselines ORDER BY model, probe, config_hash")

    def link_runs(self, matrix: str, run_ids: list[str]) -> None:
        """Make runs already done elsewhere part of `matrix` (the same cell is the same run)."""
        with self._connect() as con:
            _insert(con, "matrix_runs", [[matrix, r] for r in run_ids], verb="INSERT OR IGNORE")

    def write_records(self, records: Iterable[RunRecord]) -> int:
        """`write_record` for many runs in one transaction, as columnar bulk inserts (ingesting
        thousands of runs: `harness ingest`, a benchmark store, merging stores). The store ends up
        as `write_record` called on each in order would leave it: a run_id given twice keeps
        its last record (and the matrix and sweep it was first written with), and is linked to
        every matrix it came with. Returns how many distinct runs were written."""
        given = list(records)
        if not given:
            return 0
        first = {}
        for record in given:
            first.setdefault(record.run_id, record)
        records = list({record.run_id: record for record in given}.values())  # the last of each run_id
        runs = [record.to_dict() for record in records]
        for row in runs:
            row["config"], row["versions"] = json.dumps(row["config"], default=str), json.dumps(row["versions"])
            row["matrix"], row["sweep"] = first[row["run_id"]].matrix, first[row["run_id"]].sweep
        tables = {
            "runs": _columns(RUN_COLUMNS, [tuple(row[c] for c in RUN_COLUMNS) for row in runs]),
            "metrics": _columns(("run_id", "kind", "name", "split", "value", "stderr"), [
                (r.run_id, m["kind"], m["name"], m["split"], _finite(m["value"]), _finite(m["stderr"]))
                for r in records for m in r.metrics]),
            "curves": _columns(("run_id", "step", "epoch", "loss", "eval_loss", "lr"), [
                (r.run_id, c["step"], c["epoch"], _finite(c["loss"]), _finite(c["eval_loss"]), c["lr"])
                for r in records for c in r.curves]),
            "samples": _columns(("run_id", "idx", "input", "reference", "prediction"), [
                (r.run_id, s["idx"], s["input"], s["reference"], s["prediction"]) for r in records for s in r.samples]),
            "matrix_runs": _columns(("matrix", "run_id"), list(dict.fromkeys((r.matrix, r.run_id) for r in given))),
            "weight_updates": _update_rows(records),
            "trajectory": _trajectory_rows(records),
        }
        updates = ", ".join(f"{c} = excluded.{c}" for c in RUN_COLUMNS if c not in ("run_id", "matrix", "sweep"))
        with self._connect() as con:
            con.execute("BEGIN TRANSACTION")
            try:
                con.execute("DELETE FROM metrics WHERE list_contains(?, run_id)", [[r.run_id for r in records]])
                con.execute("DELETE FROM curves WHERE list_contains(?, run_id)", [[r.run_id for r in records]])
                con.execute("DELETE FROM samples WHERE list_contains(?, run_id)", [[r.run_id for r in records]])
                con.execute("DELETE FROM items WHERE list_contains(?, run_id)", [[r.run_id for r in records]])
                for table in ("weight_updates", "trajectory", "attempts"):
                    con.execute(f"DELETE FROM {table} WHERE list_contains(?, run_id)", [[r.run_id for r in records]])
                _insert_items(con, records)
                for table, rows in tables.items():
                    if rows.num_rows:
                        con.register("incoming", rows)
                        cols = ", ".join(rows.column_names)
                        verb = "INSERT OR IGNORE" if table == "matrix_runs" else "INSERT"
                        conflict = f" ON CONFLICT (run_id) DO UPDATE SET {updates}" if table == "runs" else ""
                        con.execute(f"{verb} INTO {table} ({cols}) SELECT {cols} FROM incoming{conflict}")
                        con.unregister("incoming")
                con.execute("COMMIT")
            except BaseException:
                _rollback(con)
                raise
        return len(records)

    # ----------------------------------------------------------------- reads

    @contextlib.contextmanager
    def reading(self):
        """Hold one read-only connection for a block, so every query in it reads one consistent
        state of the store (a writer waits for the block to end: keep it short)."""
        if self._held is not None:
            yield self
            return
        with self._connect(read_only=True) as con:
            self._held = con
            try:
                yield self
            finally:
                self._held = None

    def query(self, sql: str, params: Iterable = ()) -> pd.DataFrame:
        if self._held is not None:
            return self._held.execute(sql, list(params)).df()
        with self._connect(read_only=True) as con:
            return con.execute(sql, list(params)).df()

    def _query_later_tables(self, sql: str, params: list) -> pd.DataFrame:
        """`query` over tables that stores written by an earlier harness do not have yet (item
        outcomes, attempts: they gain them on their next write): empty there."""
        try:
            return self.query(sql, params)
        except duckdb.CatalogException:
            return pd.DataFrame()

    def statuses(self, run_ids: Iterable[str]) -> dict[str, str]:
        ids = list(run_ids)
        if not self.path.exists() or not ids:
            return {}
        df = self.query("SELECT run_id, status FROM runs WHERE list_contains(?, run_id)", [ids])
        return dict(zip(df["run_id"], df["status"]))

    def runs(self, matrix: str | None = None) -> pd.DataFrame:
        """One row per run (of `matrix`, or all), newest first."""
        return self.query(
            "SELECT r.run_id, r.model, r.method, r.task, r.seed, r.status, r.error, r.started_at, "
            "r.finished_at, r.matrix AS first_matrix FROM runs r "
            "WHERE ? IS NULL OR r.run_id IN (SELECT run_id FROM matrix_runs WHERE matrix = ?) "
            "ORDER BY r.started_at DESC NULLS LAST, r.run_id",
            [matrix, matrix],
        )

    def attempts(self, run_ids: Iterable[str] | None = None) -> pd.DataFrame:
        """The kept failed re-runs (`write_attempts`) of these runs (None: all): run_id, sweep,
        status, error, started_at, finished_at."""
        ids = None if run_ids is None else list(run_ids)
        return self._query_later_tables(
            "SELECT run_id, sweep, status, error, started_at, finished_at FROM attempts "
            "WHERE ?::VARCHAR[] IS NULL OR list_contains(?::VARCHAR[], run_id) ORDER BY run_id", [ids, ids])

    def matrices(self) -> list[str]:
        return self.query("SELECT DISTINCT matrix FROM matrix_runs ORDER BY matrix")["matrix"].tolist()

    def tasks(self, matrix: str) -> list[str]:
        df = self.query(
            "SELECT DISTINCT r.task FROM runs r JOIN matrix_runs m USING (run_id) WHERE m.matrix = ? ORDER BY r.task",
            [matrix],
        )
        return df["task"].tolist()

    def run_metrics(self, matrix: str | None = None, task: str | None = None, status: str | None = "done") -> pd.DataFrame:
        """Long table: one row per (run, metric), with the run's axes and status."""
        return self.query(
            "SELECT r.run_id, r.model, r.method, r.task, r.seed, "
            "TRY_CAST(json_extract(r.config, '$.method_options.lr') AS DOUBLE) AS lr, "
            "r.status, r.primary_metric, r.error, m.kind, m.name, m.split, m.value, m.stderr "
            "FROM runs r LEFT JOIN metrics m USING (run_id) "
            "WHERE (? IS NULL OR r.run_id IN (SELECT run_id FROM matrix_runs WHERE matrix = ?)) "
            "AND (? IS NULL OR r.task = ?) AND (? IS NULL OR r.status = ?) "
            "ORDER BY r.model, r.method, r.seed, m.kind, m.name, m.split",
            [matrix, matrix, task, task, status, status],
        )

    def leaderboard(self, matrix: str, task: str) -> pd.DataFrame:
        """One row per model x method over the matrix's done runs of `task`, best first, then
        the cells without a done run (harness/leaderboard.py computes it from `run_metrics` and
        `cell_states`). Its queries share one connection: one state of the store, one open."""
        with self.reading():
            long = self.run_metrics(matrix, task)
            board = boards.build(long, task)
            chosen = boards.chosen_run_ids(board, long)
            items = self.item_outcomes(chosen, "test", texts=boards.intervals_need_texts(long))
            board = boards.with_intervals(board, items, long, task)
            board = boards.with_forgetting(board, self.probe_item_pairs(chosen), long)
            return boards.with_cell_states(board, self.cell_states(matrix, task))

    def tuning_budget(self, matrix: str, task: str) -> pd.DataFrame:
        """Expected best validation score after k of the tried learning rates (leaderboard.py)."""
        return boards.tuning_budget(self.run_metrics(matrix, task), task)

    def cell_states(self, matrix: str, task: str) -> pd.DataFrame:
        """Per model x method of the matrix's runs of `task`: how many runs are in each state,
        and the first error of a run that is not done."""
        return self.query(
            "SELECT r.model, r.method, r.status, count(*) AS runs, min(r.error) AS error "
            "FROM runs r JOIN matrix_runs m USING (run_id) WHERE m.matrix = ? AND r.task = ? "
            "GROUP BY ALL ORDER BY r.model, r.method, r.status",
            [matrix, task],
        )

    def filtered_leaderboard(self, matrix: str, task: str, *, models: list[str] | None = None,
                             methods: list[str] | None = None) -> pd.DataFrame:
        """`leaderboard` rows of the given models and methods (None: all), same columns as
        `harness export` writes (rows are model x method, so filtering rows after aggregating is
        the same as aggregating the filtered runs; filter values never reach SQL)."""
        return boards.keep_rows(self.leaderboard(matrix, task), models=models, methods=methods)

    def run_table(self, matrix: str, task: str, *, models: list[str] | None = None,
                  methods: list[str] | None = None, sweeps: list[str] | None = None) -> pd.DataFrame:
        """One row per done run of `task` in `matrix`: model, method, seed, run_id, primary_metric,
        then one column per metric (`test_accuracy`, `trainable_params`, `forgetting_<probe>`, ...)."""
        axes_sql, axes_params = _axes_filter(models, methods, sweeps)
        long = self.query(
            "SELECT r.model, r.method, r.seed, r.run_id, r.primary_metric, m.kind, m.name, m.split, m.value "
            "FROM runs r JOIN matrix_runs x USING (run_id) JOIN metrics m USING (run_id) "
            f"WHERE x.matrix = ? AND r.task = ? AND r.status = 'done'{axes_sql}",
            [matrix, task, *axes_params],
        )
        if long.empty:
            return pd.DataFrame()
        wide = boards.wide_runs(long, ["model", "method", "seed", "run_id"])
        wide.insert(4, "primary_metric", long["primary_metric"].dropna().iloc[0])
        return wide

    def learning_forgetting(self, matrix: str, task: str, *, models: list[str] | None = None,
                            methods: list[str] | None = None, sweeps: list[str] | None = None) -> pd.DataFrame:
        """`run_table` plus `task_gain`: the run's test primary metric minus the mean of the
        `base` runs of the same model and task in the matrix (NaN where there is no base run)."""
        table = self.run_table(matrix, task, models=models, methods=methods, sweeps=sweeps)
        if table.empty:
            return table
        return boards.task_gain(table, self.run_table(matrix, task, methods=["base"]))

    def facets(self, matrix: str) -> pd.DataFrame:
        """The distinct (task, model, method, sweep) of the matrix's runs, with their run counts."""
        return self.query(
            "SELECT r.task, r.model, r.method, r.sweep, count(*) AS runs "
            "FROM runs r JOIN matrix_runs m USING (run_id) WHERE m.matrix = ? "
            "GROUP BY ALL ORDER BY ALL",
            [matrix],
        )

    def run_states(self, matrix: str, *, task: str | None = None, models: list[str] | None = None,
                   methods: list[str] | None = None, sweeps: list[str] | None = None) -> pd.DataFrame:
        """The matrix's runs in any state, failures first (then interrupted, running, pending,
        done), newest first within a state."""
        axes_sql, axes_params = _axes_filter(models, methods, sweeps)
        return self.query(
            "SELECT r.status, r.model, r.method, r.task, r.seed, r.error, r.started_at, r.finished_at, "
            "r.sweep, r.run_id FROM runs r JOIN matrix_runs m USING (run_id) "
            f"WHERE m.matrix = ? AND (? IS NULL OR r.task = ?){axes_sql} "
            "ORDER BY coalesce(list_position(?::VARCHAR[], r.status), 99), r.started_at DESC NULLS LAST, "
            "r.model, r.method, r.seed, r.run_id",
            [matrix, task, task, *axes_params, list(STATE_ORDER)],
        )

    def item_outcomes(self, run_ids: list[str], split: str | None = None, *, texts: bool = True) -> pd.DataFrame:
        """The item-level outcomes of these runs (one split, or all): run_id, split, metric,
        item_id, value, confidence, weight, and with `texts` the prediction and reference too."""
        columns = [f"i.{c}" for c in ITEM_COLUMNS if texts or c != "prediction"]
        reference, join = (", t.reference", " LEFT JOIN item_texts t USING (item_id)") if texts else ("", "")
        return self._query_later_tables(
            f"SELECT {', '.join(columns)}{reference} FROM items i{join} WHERE list_contains(?, i.run_id) "
            "AND (? IS NULL OR i.split = ?) ORDER BY i.run_id, i.split, i.item_id",
            [list(run_ids), split, split])

    def task_items(self, matrix: str, task: str, split: str, *, models: list[str] | None = None) -> pd.DataFrame:
        """The item outcomes of the matrix's done runs of `task` on one split, with each run's
        model, method, seed and learning rate and each item's input and reference."""
        axes_sql, axes_params = _axes_filter(models, None, None)
        return self._query_later_tables(
            "SELECT r.model, r.method, r.seed, r.run_id, "
            "TRY_CAST(json_extract(r.config, '$.method_options.lr') AS DOUBLE) AS lr, "
            "i.metric, i.item_id, i.value, i.prediction, i.confidence, t.input, t.reference "
            "FROM runs r JOIN matrix_runs x USING (run_id) JOIN items i USING (run_id) "
            "LEFT JOIN item_texts t USING (item_id) "
            f"WHERE x.matrix = ? AND r.task = ? AND r.status = 'done' AND i.split = ?{axes_sql} "
            "ORDER BY r.model, r.method, r.seed, i.item_id",
            [matrix, task, split, *axes_params])

    def model_task_items(self, model: str, task: str, split: str) -> pd.DataFrame:
        """Item outcomes of every done run of this model and task (any matrix): method, seed,
        run_id, item_id, value."""
        return self._query_later_tables(
            "SELECT r.method, r.seed, r.run_id, i.item_id, i.value FROM runs r JOIN items i USING (run_id) "
            "WHERE r.model = ? AND r.task = ? AND r.status = 'done' AND i.split = ?",
            [model, task, split])

    def probe_item_pairs(self, run_ids: list[str]) -> pd.DataFrame:
        """For each of these runs and each probe it was scored on: per item, the tuned model's
        outcome and the base model's (from the cached base score the run used), paired on the
        item id: run_id, probe, metric, higher_is_better, item_id, value, weight, base_value,
        base_weight. Runs whose probes kept no item outcomes are absent."""
        runs = self.query("SELECT run_id, config FROM runs WHERE list_contains(?, run_id)", [list(run_ids)])
        keys = []
        for run_id, config in zip(runs["run_id"], runs["config"]):
            config = json.loads(config) if config else {}
            model_ref = (config.get("identity") or {}).get("model")
            for probe in config.get("probe_runs") or []:
                keys.append((run_id, model_ref, probe["probe"], probe["config_hash"]))
        if not keys:
            return pd.DataFrame()
        columns = [list(column) for column in zip(*keys)]
        return self._query_later_tables(
            "WITH k AS (SELECT unnest(?::VARCHAR[]) AS run_id, unnest(?::VARCHAR[]) AS model_ref, "
            "unnest(?::VARCHAR[]) AS probe, unnest(?::VARCHAR[]) AS config_hash) "
            "SELECT k.run_id, k.probe, b.metric, b.higher_is_better, i.item_id, i.value, i.weight, "
            "p.value AS base_value, p.weight AS base_weight FROM k "
            "JOIN items i ON i.run_id = k.run_id AND i.split = 'probe:' || k.probe "
            "JOIN probe_baseline_items p ON p.model = k.model_ref AND p.probe = k.probe "
            "AND p.config_hash = k.config_hash AND p.item_id = i.item_id "
            "JOIN probe_baselines b ON b.model = k.model_ref AND b.probe = k.probe "
            "AND b.config_hash = k.config_hash ORDER BY k.run_id, k.probe, i.item_id", columns)

    def item_texts(self, item_ids: list[str]) -> pd.DataFrame:
        """Input and reference of each item id."""
        return self._query_later_tables("SELECT item_id, input, reference FROM item_texts WHERE list_contains(?, item_id)",
                          [list(item_ids)])

    def run(self, run_id: str) -> dict | None:
        """Every column of one run, with `config` and `versions` parsed; None if absent."""
        df = self.query("SELECT * FROM runs WHERE run_id = ?", [run_id])  # *: old stores lack RUN_COLUMNS_ADDED
        if df.empty:
            return None
        row = {k: (None if _missing(v) else v) for k, v in df.iloc[0].items()}
        row |= {column: default for column, (_, default) in RUN_COLUMNS_ADDED.items() if column not in row}
        for key in ("config", "versions"):
            row[key] = json.loads(row[key]) if row[key] else {}
        return row

    def done_records(self, matrix: str) -> list[RunRecord]:
        """The matrix's done runs as records holding their config and metrics (no curves,
        samples or items): what `harness export --mlflow` writes."""
        runs = self.query("SELECT r.run_id, r.matrix, r.sweep, r.model, r.method, r.task, r.seed, r.config, "
                          "r.status, r.primary_metric FROM runs r JOIN matrix_runs m USING (run_id) "
                          "WHERE m.matrix = ? AND r.status = 'done' ORDER BY r.run_id", [matrix])
        metrics = self.query("SELECT run_id, kind, name, split, value, stderr FROM metrics WHERE run_id IN "
                             "(SELECT run_id FROM matrix_runs WHERE matrix = ?)", [matrix])
        by_run = {run_id: group.drop(columns="run_id") for run_id, group in metrics.groupby("run_id")}
        out = []
        for row in runs.to_dict("records"):
            rows = by_run.get(row["run_id"], pd.DataFrame())
            metric_rows = [{k: (None if _missing(v) else v) for k, v in m.items()} for m in rows.to_dict("records")]
            out.append(RunRecord(**{**row, "matrix": matrix, "seed": int(row["seed"]),
                                    "config": json.loads(row["config"]) if row["config"] else {}},
                                 metrics=metric_rows))
        return out

    def metrics(self, run_id: str) -> pd.DataFrame:
        """Every metric of one run: kind, name, split, value, stderr."""
        return self.query(
            "SELECT kind, name, split, value, stderr FROM metrics WHERE run_id = ? "
            "ORDER BY kind = 'efficiency', kind, name, split NULLS FIRST",
            [run_id],
        )

    def trajectories(self, matrix: str, task: str, *, models: list[str] | None = None,
                     methods: list[str] | None = None) -> pd.DataFrame:
        """The checkpoint scores of the matrix's done runs of `task` (harness.checkpoints): model,
        method, seed, run_id, step, fraction, kind, name, split, value, stderr, in step order."""
        axes_sql, axes_params = _axes_filter(models, methods, None)
        return self._query_later_tables(
            "SELECT r.model, r.method, r.seed, r.run_id, t.step, t.fraction, t.kind, t.name, t.split, t.value, "
            "t.stderr FROM runs r JOIN matrix_runs x USING (run_id) JOIN trajectory t USING (run_id) "
            f"WHERE x.matrix = ? AND r.task = ? AND r.status = 'done'{axes_sql} "
            "ORDER BY r.model, r.method, r.seed, t.step, t.kind, t.name, t.split",
            [matrix, task, *axes_params])

    def weight_updates(self, run_id: str) -> pd.DataFrame:
        """What training changed in the run's weights, one row per matrix or added parameter
        (harness.updates), in model order."""
        return self._query_later_tables(
            f"SELECT {', '.join(UPDATE_COLUMNS)} FROM weight_updates WHERE run_id = ? ORDER BY rowid", [run_id])

    def probe_scores(self, run_id: str) -> pd.DataFrame:
        """The run's probe scores (kind 'probe') next to the base model's (kind 'probe_base', same
        name and split) and the forgetting ('forgetting': how much worse than the base; for a
        higher-is-better score without a recorded base, base = score + forgetting)."""
        return self.query(
            "SELECT p.name AS probe, p.split AS metric, p.value AS score, p.stderr, "
            "coalesce(b.value, p.value + f.value) AS base, f.value AS forgetting "
            "FROM metrics p LEFT JOIN metrics f ON f.run_id = p.run_id AND f.kind = 'forgetting' "
            "AND f.name = p.name AND f.split IS NOT DISTINCT FROM p.split "
            "LEFT JOIN metrics b ON b.run_id = p.run_id AND b.kind = 'probe_base' "
            "AND b.name = p.name AND b.split IS NOT DISTINCT FROM p.split "
            "WHERE p.run_id = ? AND p.kind = 'probe' ORDER BY p.name = 'mean', p.name, p.split",
            [run_id],
        )

    def search_samples(self, run_id: str, text: str = "") -> pd.DataFrame:
        """The run's sample predictions whose input contains `text` (case-insensitive)."""
        return self.query(
            "SELECT idx, input, reference, prediction FROM samples "
            "WHERE run_id = ? AND strpos(lower(input), lower(?)) > 0 ORDER BY idx",
            [run_id, text],
        )

    def curves_of(self, run_ids: Iterable[str]) -> pd.DataFrame:
        """Training curves of several runs, each row with its run's model, method and seed."""
        return self.query(
            "SELECT r.model, r.method, r.seed, c.* FROM curves c JOIN runs r USING (run_id) "
            "WHERE list_contains(?::VARCHAR[], c.run_id) ORDER BY c.run_id, c.step",
            [list(run_ids)],
        )

    def curves(self, run_id: str) -> pd.DataFrame:
        return self.query("SELECT * FROM curves WHERE run_id = ? ORDER BY step", [run_id])

    def samples(self, run_id: str) -> pd.DataFrame:
        return self.query("SELECT * FROM samples WHERE run_id = ? ORDER BY idx", [run_id])

    def export(self, out_dir: Path, matrix: str | None = None, fmt: str = "csv") -> list[Path]:
        """results/leaderboards/<matrix>_<task>.<ext> for each (matrix, task); for csv and parquet
        also <matrix>_<task>_tuning where a method tried several learning rates,
        <matrix>_<task>_trajectory where runs were probed during training, and runs (long). md and
        latex write the leaderboards as paper tables (harness/tables.py). Each file name goes
        through files.inside: a matrix or task whose name is unsafe as a file name (a store can
        hold one from another machine's records) is skipped, every other file is written, and
        then ExportIncomplete names what was skipped."""
        from harness import tables

        out_dir = Path(out_dir)
        known = self.matrices()
        if matrix is not None and matrix not in known:
            raise StoreError(f"no matrix {matrix!r} in {self.path} (it holds: {', '.join(map(repr, known)) or 'none'})")
        data = fmt in ("csv", "parquet")
        written, skipped = [], []

        def write(stem: str, table: Callable[[], pd.DataFrame], what: str, optional: bool = False, **paper) -> bool:
            try:
                path = files.inside(out_dir, stem + tables.EXTENSIONS[fmt])
            except files.UnsafePath as err:
                skipped.append(f"{what}: not written: {err}")
                return False
            frame = table()
            if optional and frame.empty:
                return False  # only where a method tried several learning rates, or runs had checkpoints
            written.append(tables.write(frame, path.with_name(stem), fmt, **paper))
            return True

        try:
            _make_folder(out_dir)
            for m in [matrix] if matrix else known:
                for task in self.tasks(m):
                    what = f"matrix {m[:files.NAME_MAX]!r}, task {task[:files.NAME_MAX]!r}"
                    if write(f"{m}_{task}", lambda: self.leaderboard(m, task), what, task=task,
                             caption=f"{m}: {task}") and data:
                        write(f"{m}_{task}_tuning", lambda: self.tuning_budget(m, task), what, optional=True)
                        write(f"{m}_{task}_trajectory", lambda: self.trajectories(m, task), what, optional=True)
            if data:
                write(f"{matrix}_runs" if matrix else "runs",
                      lambda: self.run_metrics(matrix, status=None).drop(columns=["primary_metric"]), "the runs table")
        except OSError as err:
            raise StoreError(f"cannot write the tables into {out_dir}: {err.strerror or err}"
                             + (f" ({err.filename})" if err.filename else "")) from None
        if skipped:
            raise ExportIncomplete(written, skipped)
        return written


def _make_folder(folder: Path) -> None:
    if folder.exists() and not folder.is_dir():
        raise StoreError(f"cannot write the tables into {folder}: it is a file, not a folder")
    folder.mkdir(parents=True, exist_ok=True)


def _axes_filter(models, methods, sweeps) -> tuple[str, list]:
    """SQL conditions on runs `r` for the given value lists (None: no condition); the values
    only ever travel as query parameters."""
    sql, params = "", []
    for column, values in (("model", models), ("method", methods), ("sweep", sweeps)):
        if values is not None:
            sql += f" AND list_contains(?::VARCHAR[], r.{column})"
            params.append([str(v) for v in values])
    return sql, params


def _missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NaT


def _columns(names: tuple[str, ...], rows: list[tuple]):
    """Rows as an Arrow table (None stays NULL), for a columnar bulk insert."""
    import pyarrow as pa  # only bulk writes need it: keep it off the CLI's import path

    return pa.table({name: [row[i] for row in rows] for i, name in enumerate(names)})


def _update_rows(records: list[RunRecord]):
    """The records' weight-update rows (harness.updates) as one Arrow table."""
    return _columns(("run_id", *UPDATE_COLUMNS), [
        (r.run_id, *(_finite(u.get(c)) if c in ("base_norm", "update_norm", "relative") else u.get(c)
                     for c in UPDATE_COLUMNS)) for r in records for u in r.updates])


def _trajectory_rows(records: list[RunRecord]):
    """The records' checkpoint scores (harness.checkpoints) as one Arrow table."""
    return _columns(("run_id", *TRAJECTORY_COLUMNS), [
        (r.run_id, *(_finite(point.get(c)) if c in ("value", "stderr") else point.get(c) for c in TRAJECTORY_COLUMNS))
        for r in records for point in r.trajectory])


def _insert_arrow(con, table: str, rows) -> None:
    if rows.num_rows:
        con.register("incoming_rows", rows)
        con.execute(f"INSERT INTO {table} ({', '.join(rows.column_names)}) SELECT * FROM incoming_rows")
        con.unregister("incoming_rows")


def _insert_items(con, records: list[RunRecord]) -> None:
    """The records' item-level outcomes (columnar entries) into `items`, their texts into
    `item_texts` once per item id, as Arrow bulk inserts (a run holds thousands of items)."""
    import pyarrow as pa

    columns = {name: [] for name in ITEM_COLUMNS}
    texts: dict[str, tuple[str, str]] = {}
    for record in records:
        for entry in record.items:
            n = len(entry["item_id"])
            columns["run_id"] += [record.run_id] * n
            columns["split"] += [entry["split"]] * n
            columns["metric"] += [entry["metric"]] * n
            columns["item_id"] += entry["item_id"]
            columns["value"] += [_finite(v) for v in entry["value"]]
            columns["prediction"] += [None if p is None else str(p) for p in entry.get("prediction") or [None] * n]
            for name in ("confidence", "weight"):
                columns[name] += [_finite(v) for v in entry.get(name) or [None] * n]
            for item, text, reference in zip(entry["item_id"], entry.get("input") or [], entry.get("reference") or []):
                texts.setdefault(item, (text, reference))
    if not columns["run_id"]:
        return
    con.register("incoming_items", pa.table(columns))
    con.execute(f"INSERT INTO items ({', '.join(ITEM_COLUMNS)}) SELECT * FROM incoming_items")
    con.unregister("incoming_items")
    if texts:
        con.register("incoming_texts", pa.table({"item_id": list(texts), "input": [t for t, _ in texts.values()],
                                                 "reference": [r for _, r in texts.values()]}))
        con.execute("INSERT OR IGNORE INTO item_texts SELECT * FROM incoming_texts")
        con.unregister("incoming_texts")


def _write_baseline_items(con, row: dict, *, replace: bool) -> None:
    """A base score's item outcomes (the base side of paired forgetting); like the score, the
    first ones stored for a key are kept unless `replace`."""
    key = [row["model"], row["probe"], row["config_hash"]]
    where = "model = ? AND probe = ? AND config_hash = ?"
    if replace:
        con.execute(f"DELETE FROM probe_baseline_items WHERE {where}", key)
    elif con.execute(f"SELECT count(*) FROM probe_baseline_items WHERE {where}", key).fetchone()[0]:
        return
    entry = row["items"]
    weights = entry.get("weight") or [None] * len(entry["item_id"])
    _insert(con, "probe_baseline_items", [[*key, item, _finite(value), _finite(weight)] for item, value, weight
                                          in zip(entry["item_id"], entry["value"], weights)])


def _rollback(con) -> None:
    """Undo the open transaction; if DuckDB cannot (the file is damaged), the error that stopped
    the transaction is the one to report."""
    with contextlib.suppress(duckdb.Error):
        con.execute("ROLLBACK")


def _insert(con, table: str, rows: list[list], verb: str = "INSERT") -> None:
    if rows:
        con.executemany(f"{verb} INTO {table} VALUES ({', '.join('?' for _ in rows[0])})", rows)


def _finite(value):
    """NaN/inf cannot be compared or averaged meaningfully: store them as NULL."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return None
    return float(value)
