"""Administration: config doc|show, secrets new-key|encrypt|rotate, db upgrade|check|current, version."""

import getpass
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from omni_tasks import __version__
from omni_tasks.cli.parsing import check, fail
from omni_tasks.core import inputs
from omni_tasks.core.errors import SecretError

console = Console()
config_app = typer.Typer(help="Inspect the effective configuration.", no_args_is_help=True)
secrets_app = typer.Typer(help="Fernet-encrypted credentials (enc:... values).", no_args_is_help=True)
db_app = typer.Typer(help="Database schema (Alembic revisions in db/).", no_args_is_help=True)


@config_app.command("doc")
def config_doc(
    write: Annotated[Path | None, typer.Option("--write", help="write the page to this file (docs/configuration.md)")] = None,
    check_file: Annotated[
        Path | None, typer.Option("--check", help="exit 1 when this file is not what the settings say (docs/configuration.md)")
    ] = None,
) -> None:
    """Print the configuration reference (markdown) made from the settings' own descriptions: docs/configuration.md is this output."""
    from omni_tasks.settings import configuration_page

    page = configuration_page()
    if write is not None:
        try:
            write.write_text(page, encoding="utf-8")
        except OSError as exc:
            fail("config doc", f"cannot write {write}: {exc.strerror or exc}", 1)
        return
    if check_file is not None:
        try:
            current = check_file.read_text(encoding="utf-8")
        except OSError as exc:
            fail("config doc", f"cannot read {check_file}: {exc.strerror or exc}", 1)
        if current != page:
            fail("config doc", f"{check_file} is stale: regenerate it with `omni config doc --write {check_file}`", 1)
        return
    print(page, end="")


@config_app.command("show")
def config_show() -> None:
    """Print the effective settings, secrets masked."""
    from omni_tasks.cli.common import prepare

    settings = prepare("cli", configure_log=False)
    table = Table(title="omni-tasks settings")
    table.add_column("variable")
    table.add_column("value")
    for variable, shown in settings.masked():
        table.add_row(variable, shown)
    table.add_row("(effective broker)", settings.broker_url if not settings.broker.url else "(as OMNI_BROKER_URL)")
    table.add_row("(effective database)", settings.database_url if not settings.database.url else "(as OMNI_DATABASE_URL)")
    console.print(table)


@secrets_app.command("new-key")
def secrets_new_key() -> None:
    """Print a fresh Fernet key. Put it first in OMNI_SECRET_KEY (comma separated) to rotate."""
    from omni_tasks.core import secrets as secret_box

    print(secret_box.new_key())


@secrets_app.command("encrypt")
def secrets_encrypt() -> None:
    """Encrypt a value read from stdin (or a hidden prompt); prints enc:... for a .env file."""
    from omni_tasks.cli.common import prepare
    from omni_tasks.settings import secret_keys

    settings = prepare("cli", configure_log=False)
    keys = secret_keys(settings)
    if sys.stdin.isatty():
        value = getpass.getpass("value to encrypt (hidden): ")
        if getpass.getpass("again: ") != value:
            raise SecretError("the two entries differ; nothing encrypted")
    else:
        value = sys.stdin.read().rstrip("\r\n")
    if not value:
        raise SecretError("empty value; nothing encrypted")
    from omni_tasks.core import secrets as secret_box

    print(secret_box.encrypt(value, keys))


@secrets_app.command("rotate")
def secrets_rotate(env_file: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help=".env file to re-encrypt")]) -> None:
    """Re-encrypt every enc: value in ENV_FILE under the newest key (keep the old key listed until done)."""
    from omni_tasks.cli.common import prepare
    from omni_tasks.settings import secret_keys

    settings = prepare("cli", configure_log=False)
    from omni_tasks.core import secrets as secret_box

    rotated = secret_box.rotate_env_file(env_file, secret_keys(settings))
    console.print(f"re-encrypted {len(rotated)} value(s) under the newest key: {', '.join(rotated) or '-'}")


@db_app.command("upgrade")
def db_upgrade(revision: Annotated[str, typer.Argument()] = "head") -> None:
    """Migrate the database to REVISION (default: head)."""
    from omni_tasks.cli.common import prepare
    from omni_tasks.settings import mask_url
    from omni_tasks.storage import migrations
    from omni_tasks.storage.engine import engine_from_settings

    check("db upgrade", inputs.name, revision, what="REVISION")
    settings = prepare("cli")
    engine = engine_from_settings(settings)
    from alembic.util.exc import CommandError

    try:
        migrations.upgrade(engine, revision)
    except CommandError as exc:
        fail("db upgrade", str(exc))
    console.print(f"{mask_url(settings.database_url)} is at revision {migrations.current_revision(engine)}")


@db_app.command("current")
def db_current() -> None:
    """Print the database's revision and the code's head."""
    from omni_tasks.cli.common import prepare
    from omni_tasks.storage import migrations
    from omni_tasks.storage.engine import engine_from_settings

    settings = prepare("cli", configure_log=False)
    engine = engine_from_settings(settings)
    console.print(f"database: {migrations.current_revision(engine)}  head: {migrations.head_revision(engine)}")


@db_app.command("check")
def db_check() -> None:
    """Fail when the models and the migrated database disagree (drift)."""
    from omni_tasks.cli.common import prepare
    from omni_tasks.storage import migrations
    from omni_tasks.storage.engine import engine_from_settings

    settings = prepare("cli", configure_log=False)
    engine = engine_from_settings(settings)
    diff = migrations.drift(engine)
    if diff:
        for item in diff:
            console.print(f"[red]drift:[/red] {item}")
        raise typer.Exit(1)
    console.print("models and migrations agree")


def version() -> None:
    """Print the omni-tasks version."""
    print(__version__)


def register(app: typer.Typer) -> None:
    app.add_typer(config_app, name="config")
    app.add_typer(secrets_app, name="secrets")
    app.add_typer(db_app, name="db")
    app.command()(version)
