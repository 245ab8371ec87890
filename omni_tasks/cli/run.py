"""Commands that run processes: up, worker, beat, flower, server."""

import os
import secrets
import shutil
import signal
import socket
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from omni_tasks.cli.parsing import check, option
from omni_tasks.core import inputs
from omni_tasks.core.errors import BootRefused

if TYPE_CHECKING:  # the settings (pydantic) are imported by the commands that run, not by `omni --help`
    import subprocess

    from omni_tasks.settings import Settings

console = Console(stderr=False)


def _boot_checks(settings: "Settings") -> None:
    """The start-up safety checks of DESIGN section 4 (the encrypted-secret check runs when settings load)."""
    from omni_tasks.core.runtime import get_runtime
    from omni_tasks.ops import startup_checks as safety_checks
    from omni_tasks.pipeline.broker import is_amqp_url, is_redis_url
    from omni_tasks.pipeline.taskdef import task_time_limits

    safety_checks.check_visibility_timeout(settings.broker.visibility_timeout_s, task_time_limits())
    if is_amqp_url(settings.broker_url):
        b = settings.broker
        safety_checks.check_rabbitmq(settings.broker_url, b.consumer_timeout_s, b.max_deliveries, b.management_url, task_time_limits())
    client = get_runtime().redis
    safety_checks.check_redis_reachable(client, f"Redis at {settings.redis_url.split('@')[-1]}")
    if settings.broker.require_noeviction:
        safety_checks.check_noeviction(client)
        if is_redis_url(settings.broker_url) and settings.broker_url != settings.redis_url:
            from omni_tasks.core.redis_client import redis_from_url

            safety_checks.check_noeviction(redis_from_url(settings.broker_url))


def _compile_bytecode() -> None:
    """Compile this checkout's packages (omni_tasks, workers, the beat schedule) where the interpreter looks; only changed files are redone."""
    import compileall

    import omni_tasks

    root = Path(omni_tasks.__file__).resolve().parent.parent
    try:
        for package in ("omni_tasks", "workers"):
            if (root / package).is_dir():
                compileall.compile_dir(root / package, quiet=2)  # py_compile writes whatever PYTHONDONTWRITEBYTECODE says
        if (root / "beat_schedule.py").is_file():
            compileall.compile_file(root / "beat_schedule.py", quiet=2)
    except OSError:
        pass  # a read-only or full disk: the children compile for themselves, as before


def _port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def worker(
    kind: Annotated[str, typer.Argument(help="worker kind: scans, backfill, validation, risk, watchdog, orders")],
    concurrency: Annotated[int | None, typer.Option(help="override the kind's concurrency", parser=option(inputs.integer, what="--concurrency", lo=1, hi=256))] = None,
) -> None:
    """Start one worker of KIND (queues, pool and concurrency from workers/)."""
    from workers import KINDS

    kind = check("worker", inputs.choice, kind, what="KIND", choices=tuple(KINDS))
    from omni_tasks.cli.common import prepare

    settings = prepare(f"worker-{kind}")
    _boot_checks(settings)
    from omni_tasks.pipeline.app import app as celery_app
    from omni_tasks.pipeline.hooks import set_process

    set_process(f"worker-{kind}", kind)

    celery_app.worker_main(argv=KINDS[kind].celery_argv(concurrency=concurrency, loglevel=settings.core.log_level))


def beat() -> None:
    """Start the beat scheduler. A second beat stands by until the leader's lock expires."""
    from omni_tasks.cli.common import prepare

    settings = prepare("beat")
    _boot_checks(settings)
    from omni_tasks.pipeline.app import app as celery_app
    from omni_tasks.pipeline.hooks import set_process

    set_process("beat")

    celery_app.start(["beat", f"--loglevel={settings.core.log_level}", "--scheduler=omni_tasks.pipeline.beat:LockedScheduler"])


def flower() -> None:
    """Start Flower on loopback with basic auth (OMNI_FLOWER_PASSWORD is required); times in UTC, workers re-inspected every 15 s."""
    from omni_tasks.cli.common import prepare

    settings = prepare("flower")
    password = settings.flower.password.get_secret_value() if settings.flower.password else ""
    if not password:
        raise BootRefused("Flower requires a password: set OMNI_FLOWER_PASSWORD (omni up generates one)")
    from omni_tasks.cli import flower_app
    from omni_tasks.pipeline.app import app as celery_app
    from omni_tasks.pipeline.hooks import set_process
    from omni_tasks.pipeline.rabbit import flower_broker_args

    set_process("flower")

    # The credentials go in through argv of this process's own click call,
    # never through the OS command line, so `ps` does not show them.
    flower_app.run(
        celery_app,
        [
            f"--address={settings.flower.host}",
            f"--port={settings.flower.port}",
            f"--basic-auth={settings.flower.user}:{password}",
            "--purge_offline_workers=60",
            "--max_tasks=10000",
            "--persistent=False",
            *flower_broker_args(settings),
        ],
    )


def server() -> None:
    """Serve /metrics and /health on the metrics host and port."""
    from omni_tasks.cli.common import prepare

    settings = prepare("server")
    from omni_tasks.core.runtime import get_runtime
    from omni_tasks.ops import health
    from omni_tasks.ops.engaging import http_kill_endpoint
    from omni_tasks.ops.httpserver import make_server
    from omni_tasks.pipeline import observe
    from omni_tasks.pipeline.queues import ALL_QUEUES
    from workers import KINDS

    runtime = get_runtime()
    queues = [q.value for q in ALL_QUEUES]
    from omni_tasks.risk import snapshot_reads as _warm  # noqa: F401 - import before serving: the first /health answers fast

    def snapshot() -> dict[str, Any]:
        from omni_tasks.safety.killswitch import state_info

        snap = observe.live_snapshot(runtime.redis, settings.broker_url, queues, settings.broker.dead_after_s)
        snap["trading"] = state_info(runtime.redis, runtime.sessions)  # omni_trading_state: the same rule as the order path
        return snap

    def health_check() -> tuple[int, dict[str, Any]]:
        return health.check_health(
            engine=runtime.engine,
            client=runtime.redis,
            broker_url=settings.broker_url,
            worker_kinds=[*KINDS, "stream"],
            dead_after_s=settings.broker.dead_after_s,
            watchdog_interval_s=settings.watchdog.interval_s,
            settings=settings,
        )

    def stream_source() -> dict[str | None, tuple[dict[str, Any], dict[str, Any]]]:
        from omni_tasks.stream.latency import read_published
        from omni_tasks.stream.shards import shard_count, shard_labels
        from omni_tasks.stream.status import read_status

        return {shard: (read_status(runtime.redis, shard), read_published(runtime.redis, shard)) for shard in shard_labels(shard_count(settings))}

    from omni_tasks.core import counters
    from omni_tasks.ops.exposition import build_exposition

    exposition = build_exposition(
        snapshot,
        settings.metrics_dir,
        stream_source,
        lambda: observe.desk_snapshot(runtime),
        files_max_age_s=settings.metrics.scrape_cache_s,
        shared_counters=lambda: counters.read_all(runtime.redis),
    )
    httpd = make_server(
        settings.metrics.host,
        settings.metrics.port,
        metrics_body=exposition.render,
        health=health_check,
        kill=http_kill_endpoint(settings),
        request_timeout_s=settings.metrics.request_timeout_s,
        workers=settings.metrics.workers,
        max_connections=settings.metrics.max_connections,
    )

    def stop(_signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    print(f"omni server: /metrics and /health on http://{settings.metrics.host}:{settings.metrics.port}", flush=True)
    try:
        httpd.serve_forever(poll_interval=0.5)
    except KeyboardInterrupt:
        pass
    finally:
        httpd.server_close()


def up(
    for_seconds: Annotated[float | None, typer.Option("--for", help="run this many seconds, then stop cleanly", parser=option(inputs.seconds, what="--for", hi=366 * 86_400.0))] = None,
) -> None:
    """Run the whole pipeline: every worker kind, beat, Flower, the metrics/health server.

    With no OMNI_BROKER_URL / OMNI_DATABASE_URL it starts an embedded Redis
    (unix socket in the data folder) and uses SQLite there.
    """
    from omni_tasks.cli.common import prepare

    settings = prepare("up", configure_log=False)
    from omni_tasks.core.logs import configure_logging

    # The terminal of `omni up` is for people: warnings only, readable; each child logs JSON to its file.
    configure_logging(level="WARNING", fmt="console", role="up", secrets=settings.secret_values())
    from omni_tasks.ops import embedded
    from omni_tasks.ops.forking import ForkServer
    from omni_tasks.ops.supervisor import ChildSpec, Supervisor
    from workers import KINDS

    data_dir = settings.data_dir
    logs_dir = data_dir / "logs"
    logs_dir.mkdir(parents=True, exist_ok=True)
    for name, host, port in (("Flower", settings.flower.host, settings.flower.port), ("metrics", settings.metrics.host, settings.metrics.port)):
        if not _port_free(host, port):
            raise BootRefused(f"{name} port {host}:{port} is already in use (another `omni up`?); set OMNI_{name.upper()}_PORT")

    # A fresh metrics folder: files of dead processes from an earlier run would be summed in.
    shutil.rmtree(settings.metrics_dir, ignore_errors=True)
    settings.metrics_dir.mkdir(parents=True, exist_ok=True)

    env = {k: v for k, v in os.environ.items()}
    host_metrics_dir = settings.metrics_dir / socket.gethostname()
    host_metrics_dir.mkdir(parents=True, exist_ok=True)
    env["PROMETHEUS_MULTIPROC_DIR"] = str(host_metrics_dir)
    env["OMNI_DATA_DIR"] = str(data_dir)
    # Every child imports the same modules: their bytecode is compiled once, here, as pip does for an
    # installed package (an editable install leaves the sources uncompiled, and with PYTHONDONTWRITEBYTECODE
    # each of the ten children would compile them again at every start).
    _compile_bytecode()
    flower_password = settings.flower.password.get_secret_value() if settings.flower.password else secrets.token_urlsafe(12)
    env["OMNI_FLOWER_PASSWORD"] = flower_password
    omni = [sys.executable, "-m", "omni_tasks"]

    specs: list[ChildSpec] = []
    redis_process = None
    if settings.embedded:
        socket_path = settings.embedded_redis_socket
        socket_path.unlink(missing_ok=True)
        redis_spec = ChildSpec("redis", embedded.redis_argv(data_dir, socket_path), env, stop_timeout_s=10, log_path=logs_dir / "redis.out", stop_phase=3)
        specs.append(redis_spec)
        env["OMNI_BROKER_URL"] = settings.broker_url
    if settings.database.url is None:
        env["OMNI_DATABASE_URL"] = settings.database_url
    offline = _offline(settings)
    if offline:
        # No keys and the default provider order: the offline feed, said loudly (banner) and on every row.
        env["OMNI_PROVIDERS_ORDER"] = "synthetic"

    def omni_child(name: str, args: list[str], **how: Any) -> ChildSpec:
        """A child running ``omni ARGS``: forked from the fork server, or ``python -m omni_tasks ARGS`` without one."""
        return ChildSpec(name, [*omni, *args], env, log_path=logs_dir / f"{name}.log", omni_args=args, **how)

    specs.append(omni_child("server", ["server"], stop_timeout_s=5, stop_phase=2))
    for kind in KINDS.values():
        specs.append(omni_child(f"worker-{kind.name}", ["worker", kind.name], stop_timeout_s=30, stop_phase=1))
    from omni_tasks.stream.shards import shard_count, shard_labels, worker_name

    for shard in shard_labels(shard_count(settings)):  # one stream worker per OMNI_STREAM_KEYS key (one connection per key)
        stream_name = worker_name(shard)
        specs.append(omni_child(stream_name, ["stream"] if shard is None else ["stream", "--shard", shard], stop_timeout_s=10, stop_phase=1))
    specs.append(omni_child("beat", ["beat"], stop_timeout_s=10, stop_phase=0))
    specs.append(omni_child("flower", ["flower"], stop_timeout_s=10, stop_phase=2))

    def announce(message: str) -> None:
        console.print(f"[dim]{time.strftime('%H:%M:%S UTC', time.gmtime())}[/dim] {message}")

    # The fork server imports what the children share while Redis starts and the migrations run (here,
    # with the children's environment: some modules read it when imported); the children fork from it.
    def log_fork_server(process: "subprocess.Popen[bytes]") -> None:
        if process.stdout is not None:
            Supervisor.pump_log(process.stdout, logs_dir / "forkserver.log", "forkserver")

    # Linux only: fork without exec is what the server does, and elsewhere (macOS system libraries) it is not safe.
    fork_server = ForkServer(env, on_launch=log_fork_server) if sys.platform.startswith("linux") else None
    supervisor = Supervisor(specs, announce=announce, fork_server=fork_server)
    stop_requested = {"flag": False}

    def request_stop(signum: int, _frame: Any) -> None:
        stop_requested["flag"] = True

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)

    try:
        if fork_server is not None:
            fork_server.launch()
        if settings.embedded:
            supervisor.start(supervisor.children[0])
            redis_process = supervisor.children[0].process
            embedded.wait_until_ready(settings.embedded_redis_socket, process=redis_process)
        # Everything below runs against the same services the children will use.
        from omni_tasks.core.runtime import install_settings
        from omni_tasks.settings import load_settings

        effective = load_settings(env)
        install_settings(effective)
        _migrate(effective)
        for child in supervisor.children:
            if child.process is None:
                supervisor.start(child)
        # The children boot (each worker and beat runs these checks itself before it consumes or
        # schedules anything); here they run once more while the children start, and a refusal stops
        # every child (the finally below) before any of them has work.
        _boot_checks(effective)
        _banner(effective, flower_password if settings.flower.password is None else None, logs_dir)
        # The first run's history is queued once every process is up (at the latest 15 s in): it is work for
        # the workers, and planning it (the calendar, pandas) would otherwise compete with their start on the CPU.
        ready = _wait_healthy(effective, timeout_s=15, stop=stop_requested)
        first_run = _first_run(effective, announce) if settings.embedded and offline and not stop_requested["flag"] else None
        ready = ready or _wait_healthy(effective, timeout_s=45, stop=stop_requested)
        if ready:
            announce("[green]all processes up; /health is ok[/green]")
        elif not stop_requested["flag"]:
            announce("[yellow]/health is not ok yet after 60 s; see the logs folder[/yellow]")
        deadline = None if for_seconds is None else time.monotonic() + for_seconds
        while not stop_requested["flag"] and (deadline is None or time.monotonic() < deadline):
            supervisor.poll()
            if first_run is not None and first_run.poll():
                first_run = None
            time.sleep(0.25)
    finally:
        announce("stopping every process ...")
        supervisor.stop_all()
        left = [name for name, pid in supervisor.running().items() if pid is not None]
        announce("stopped" if not left else f"[red]still running: {', '.join(left)}[/red]")


class _FirstRunProgress:
    """Console lines while the workers backfill the first run's history; True from :meth:`poll` once the job is final."""

    def __init__(self, settings: "Settings", job_id: int, total: int, announce: Any) -> None:
        from omni_tasks.core.runtime import get_runtime

        self._sessions = get_runtime().sessions
        self._job_id, self._total, self._announce = job_id, total, announce
        self._started = time.monotonic()
        self._next_at = 0.0
        self._said = -1

    def poll(self) -> bool:
        now = time.monotonic()
        if now < self._next_at:
            return False
        self._next_at = now + 2.0
        from omni_tasks.marketdata import backfill

        try:
            state = backfill.job_progress(self._sessions, self._job_id)
        except Exception as exc:  # noqa: BLE001 - progress lines are a courtesy: never stop `omni up` for them
            self._announce(f"[yellow]first run: progress unreadable ({type(exc).__name__}); `omni backfill status {self._job_id}` follows it[/yellow]")
            return True
        counts = state["by_status"]
        done = counts.get("succeeded", 0) + counts.get("failed", 0)
        elapsed = now - self._started
        if state["status"] in {"succeeded", "failed", "partial"}:
            colour = "green" if state["status"] == "succeeded" else "yellow"
            self._announce(
                f"[{colour}]first run: synthetic history {state['status']} in {elapsed:.0f} s[/{colour}] ({state['rows']:,} bars, "
                f"{counts.get('failed', 0)} partitions failed); validation, then a scan and a risk recalculation run now: "
                "`omni status`, `omni scan show`"
            )
            return True
        if done != self._said:
            self._said = done
            filled = int(24 * done / max(1, self._total))
            self._announce(f"first run: \\[{'#' * filled}{'.' * (24 - filled)}] {done}/{self._total} partitions, {state['rows']:,} synthetic bars ({elapsed:.0f} s)")
        return False


def _first_run(settings: "Settings", announce: Any) -> _FirstRunProgress | None:
    """On a data folder short of history, queue the first run's synthetic backfill (once; the workers do it). None: nothing to do."""
    days = settings.backfill.first_run_days
    if days <= 0:
        return None
    from datetime import UTC, datetime

    from omni_tasks.core.runtime import get_runtime
    from omni_tasks.marketdata import backfill, firstrun
    from omni_tasks.marketdata.tasks import enqueue_partitions
    from omni_tasks.marketdata.universe import load_universe

    runtime = get_runtime()
    today = datetime.now(tz=UTC).date()
    try:
        universe = load_universe(settings.backfill.universe_file, settings.backfill.universe)
    except (ValueError, OSError) as exc:
        announce(f"[yellow]first run: no history prepared: {exc}[/yellow]")
        return None
    short = firstrun.symbols_short_of_history(runtime.engine, universe, days=days, adjustment=settings.backfill.adjustment, today=today)
    if not short:
        return None
    the_plan = firstrun.plan_first_run(
        short, days=days, feed=settings.backfill.feed, adjustment=settings.backfill.adjustment, today=today, earliest=settings.backfill.earliest_date
    )
    job_id = backfill.create_job(runtime.sessions, the_plan, requested_by=firstrun.FIRST_RUN_REQUESTER, note=firstrun.FIRST_RUN_NOTE)
    ids = backfill.partition_ids(runtime.sessions, job_id)
    enqueue_partitions(ids)
    console.print(
        f"[bold yellow]FIRST RUN: preparing {days} days of SYNTHETIC daily history for {len(short)} symbols "
        f"(backfill job {job_id}, {len(ids)} partitions, provider=synthetic). THIS DATA IS NOT REAL.[/bold yellow] "
        "It only lets the scans, validation and risk show their work; OMNI_BACKFILL_FIRST_RUN_DAYS=0 turns this off."
    )
    return _FirstRunProgress(settings, job_id, len(ids), announce)


def _offline(settings: "Settings") -> bool:
    """No provider key and the provider order left at its default."""
    from omni_tasks.settings import ProviderSettings

    default_order = ProviderSettings().order
    return settings.alpaca.api_key is None and settings.alpha_vantage.api_key is None and settings.providers.order == default_order


def _migrate(settings: "Settings") -> None:
    from omni_tasks.storage import migrations
    from omni_tasks.storage.engine import engine_from_settings

    engine = engine_from_settings(settings)
    try:
        migrations.upgrade(engine)
    finally:
        engine.dispose()


def _wait_healthy(settings: "Settings", *, timeout_s: float, stop: dict[str, bool]) -> bool:
    url = f"http://{settings.metrics.host}:{settings.metrics.port}/health"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and not stop["flag"]:
        try:
            import urllib.request

            with urllib.request.urlopen(url, timeout=2) as response:  # our own loopback URL
                if response.status == 200:
                    import json

                    if json.loads(response.read()).get("status") == "ok":
                        return True
        except OSError:
            pass
        time.sleep(0.5)
    return False


def _banner(settings: "Settings", generated_password: str | None, logs_dir: Path) -> None:
    from omni_tasks.settings import mask_url

    table = Table(title="omni-tasks is starting", show_header=False, box=None, pad_edge=False)
    table.add_column(style="bold")
    table.add_column()
    flower_url = f"http://{settings.flower.host}:{settings.flower.port}"
    metrics_url = f"http://{settings.metrics.host}:{settings.metrics.port}"
    table.add_row("Flower", f"{flower_url}  (user [bold]{settings.flower.user}[/bold])")
    if generated_password is not None:
        table.add_row("Flower password", f"[bold]{generated_password}[/bold]  (generated for this run; set OMNI_FLOWER_PASSWORD to keep one)")
    table.add_row("Health", f"{metrics_url}/health")
    table.add_row("Metrics", f"{metrics_url}/metrics")
    table.add_row("Broker", mask_url(settings.broker_url) + ("  (embedded Redis, unix socket only)" if settings.embedded else ""))
    table.add_row("Database", mask_url(settings.database_url))
    from omni_tasks.stream.shards import shard_count

    shards = shard_count(settings)
    in_shards = f" in {shards} shards (one key each)" if shards else ""
    table.add_row("Stream", f"{settings.stream.feed} feed, {len(settings.stream.symbols)} symbols{in_shards}  (`omni stream quotes`, latencies in `omni status`)")
    table.add_row("Logs", str(logs_dir))
    console.print(table)
    if "synthetic" in settings.providers.order:
        console.print(
            "[bold yellow]Market data comes from the offline synthetic feed (provider=synthetic on every row). "
            "THIS DATA IS NOT REAL.[/bold yellow] Set OMNI_ALPACA_API_KEY/OMNI_ALPACA_SECRET_KEY for real data."
        )
    console.print("Press Ctrl-C to stop everything.")


def register(app: typer.Typer) -> None:
    app.command()(up)
    app.command()(worker)
    app.command()(beat)
    app.command()(flower)
    app.command()(server)
