"""Images without a registry: a Debian base made with mmdebstrap and a PostgreSQL stand-in keeping the
official image's contract; the build-by-content-hash the MLflow image (deploy.image_build) uses too.

Layers, so that the images share their work (every build uses the host's network):

  Debian base  mmdebstrap --variant=minbase bookworm (+ ca-certificates, python3, python3-venv),
               `docker import`ed; the tarball is cached under <engine dir>/cache
  MLflow       the Dockerfile `deploy.compose`/`deploy.helm` write, FROM deploy.base_image (the official
               Python image) or, where no registry answers, FROM the Debian base; the wheelhouse
  PostgreSQL   stand-in for postgres:15 where no registry answers: the Debian base + Debian's
               postgresql-15 + an entrypoint of ours with the official image's contract
               (POSTGRES_USER/PASSWORD/DB, PGDATA, /docker-entrypoint-initdb.d, pg_isready)

An image carries the label io.mlflow-ops.content: a hash of what it was built from (its
Dockerfile, files, build arguments, the base image's ID, the wheelhouse's pins). A build whose hash
matches the image already tagged is skipped, so the engine's data root is the image cache.
"""

from __future__ import annotations

import hashlib
import io
import re
import shutil
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import docker
from docker.errors import APIError, DockerException, ImageNotFound, NotFound

from tasks.libs.core.errors import UserError
from tasks.libs.core.programs import find_program
from tasks.libs.core.settings import Settings
from tasks.libs.engine.daemon import engine_dir

CONTENT_LABEL = "io.mlflow-ops.content"
BASE_PACKAGES = ("ca-certificates", "python3", "python3-venv")
PG_MAJOR = 15  # Debian bookworm's PostgreSQL, and the official image's tag the stand-in replaces

Say = Callable[[str], None]


def cache_dir(settings: Settings) -> Path:
    return engine_dir(settings) / "cache"


# --- present, pulled, or not ----------------------------------------------------------


def image_id(client: docker.DockerClient, name: str) -> str | None:
    try:
        return client.images.get(name).id
    except (ImageNotFound, NotFound):
        return None


def pull(client: docker.DockerClient, name: str) -> str | None:
    """None when the image is here or was pulled, else why not (one line)."""
    if image_id(client, name):
        return None
    try:
        client.images.pull(name)  # docker-py splits the tag off (latest when none)
        return None
    except (APIError, DockerException) as exc:
        text = str(getattr(exc, "explanation", None) or exc).strip()
        return text.splitlines()[0] if text else type(exc).__name__


def content_label(client: docker.DockerClient, tag: str) -> str | None:
    try:
        return (client.images.get(tag).labels or {}).get(CONTENT_LABEL)
    except (ImageNotFound, NotFound):
        return None


# --- building -------------------------------------------------------------------------


def build(
    client: docker.DockerClient,
    tag: str,
    files: dict[str, bytes | Path],
    *,
    key: str,
    say: Say,
    timeout: float,
    buildargs: dict[str, str] | None = None,
) -> None:
    """docker build of a context made of files (name -> content, or a file or folder to add),
    on the host's network, labelled with the content key. Output goes to the engine's build log."""
    with tempfile.TemporaryFile() as context:
        with tarfile.open(fileobj=context, mode="w") as tar:
            for name, content in sorted(files.items()):
                if isinstance(content, Path):
                    tar.add(str(content), arcname=name)
                else:
                    info = tarfile.TarInfo(name)
                    info.size, info.mode, info.mtime = len(content), 0o755, 0
                    tar.addfile(info, io.BytesIO(content))
        context.seek(0)
        began = time.monotonic()
        lines: list[str] = []
        try:
            stream = client.api.build(
                fileobj=context,
                custom_context=True,
                tag=tag,
                buildargs=buildargs or {},
                labels={CONTENT_LABEL: key},
                network_mode="host",  # apt reaches the mirror; no NAT, no iptables rule needed
                rm=True,
                forcerm=True,
                decode=True,
                timeout=timeout,
            )
            for chunk in stream:
                if "stream" in chunk:
                    lines += chunk["stream"].splitlines()
                if "error" in chunk:
                    tail = "\n".join(line for line in lines[-12:] if line.strip())
                    raise UserError(
                        f"building {tag} failed: {chunk['error'].strip()}\n--- last build output ---\n{tail}"
                    )
        except (APIError, DockerException) as exc:
            raise UserError(f"building {tag} failed: the engine said {str(exc).strip().splitlines()[0]}") from None
    say(f"built {tag} in {time.monotonic() - began:.0f} s")


def content_key(*parts: str | bytes) -> str:
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part if isinstance(part, bytes) else part.encode())
        digest.update(b"\0")
    return digest.hexdigest()[:16]


# --- the Debian base ------------------------------------------------------------------


def debian_base(settings: Settings, client: docker.DockerClient, say: Say) -> str:
    """The Debian base image (mmdebstrap minbase + Python), from the cached tarball when there is one."""
    cfg = settings.engine.images
    key = content_key("minbase", cfg.debian_suite, cfg.debian_mirror or "", *BASE_PACKAGES)
    tag = f"mlflow-ops/debian:{cfg.debian_suite}-{key[:12]}"
    if image_id(client, tag):
        return tag
    cache = cache_dir(settings)
    tarball = cache / f"debian-{cfg.debian_suite}-{key[:12]}.tar"
    if not tarball.is_file():
        mmdebstrap = find_program("mmdebstrap")
        if mmdebstrap is None:
            raise UserError("mmdebstrap is not installed: `inv deps --docker` (Debian package mmdebstrap)")
        cache.mkdir(parents=True, exist_ok=True, mode=0o700)
        partial = tarball.with_suffix(".partial.tar")
        command = [mmdebstrap, "--quiet", "--variant=minbase", f"--include={','.join(BASE_PACKAGES)}"]
        command += [cfg.debian_suite, str(partial), *([cfg.debian_mirror] if cfg.debian_mirror else [])]
        say(f"making the Debian base: mmdebstrap {cfg.debian_suite} into {tarball}")
        began = time.monotonic()
        done = subprocess.run(command, capture_output=True, text=True, timeout=cfg.build_timeout)
        if done.returncode != 0:
            partial.unlink(missing_ok=True)
            last = (done.stderr.strip().splitlines() or ["no output"])[-1]
            raise UserError(
                f"mmdebstrap failed ({last}); is the Debian mirror reachable? (engine.images.debian_mirror)"
            )
        partial.rename(tarball)
        say(f"Debian base made in {time.monotonic() - began:.0f} s")
    repo, _, version = tag.partition(":")
    # From the file (a known length): docker-py's chunked stream upload is refused ("header line too long").
    client.api.import_image_from_file(
        str(tarball), repository=repo, tag=version, changes=[f"LABEL {CONTENT_LABEL}={key}", 'CMD ["bash"]']
    )
    return tag


# --- the PostgreSQL stand-in ----------------------------------------------------------

STANDIN_DOCKERFILE = f"""\
# mlflow-ops' stand-in for the official postgres:{PG_MAJOR} image, only where no registry answers:
# Debian's PostgreSQL {PG_MAJOR} with the official image's contract (POSTGRES_USER / POSTGRES_PASSWORD /
# POSTGRES_DB, PGDATA, /docker-entrypoint-initdb.d, pg_isready, `postgres -c ...` as the command).
ARG BASE
FROM ${{BASE}}
RUN set -eu; \\
    mkdir -p /etc/postgresql-common/createcluster.d; \\
    echo 'create_main_cluster = false' > /etc/postgresql-common/createcluster.d/mlflow-ops.conf; \\
    apt-get update; DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends postgresql-{PG_MAJOR}; \\
    rm -rf /var/lib/apt/lists/*; \\
    ln -s /usr/lib/postgresql/{PG_MAJOR}/bin/* /usr/local/bin/; \\
    mkdir -p /docker-entrypoint-initdb.d
COPY docker-entrypoint.sh /usr/local/bin/docker-entrypoint.sh
ENV LANG=C.UTF-8 PGDATA=/var/lib/postgresql/data
VOLUME /var/lib/postgresql/data
STOPSIGNAL SIGINT
EXPOSE 5432
ENTRYPOINT ["docker-entrypoint.sh"]
CMD ["postgres"]
"""

# Written for mlflow-ops from the official image's documented behaviour: on an empty PGDATA, initdb
# as POSTGRES_USER with POSTGRES_PASSWORD (from a file, never argv), password auth from other hosts,
# POSTGRES_DB created and /docker-entrypoint-initdb.d run by a server that listens on its socket only
# (TCP clients see nothing until the database is complete), then `postgres` as the postgres user.
STANDIN_ENTRYPOINT = """\
#!/bin/sh
set -eu
: "${PGDATA:=/var/lib/postgresql/data}"
if [ "${1#-}" != "$1" ]; then set -- postgres "$@"; fi
if [ "$1" = postgres ] && [ "$(id -u)" = 0 ]; then
  mkdir -p "$PGDATA" /var/run/postgresql
  if [ "$(stat -c %U "$PGDATA")" != postgres ]; then chown -R postgres:postgres "$PGDATA"; fi
  chown postgres:postgres /var/run/postgresql
  chmod 700 "$PGDATA"
  exec setpriv --reuid=postgres --regid=postgres --init-groups "$0" "$@"
fi
if [ "$1" = postgres ] && [ ! -s "$PGDATA/PG_VERSION" ]; then
  : "${POSTGRES_USER:=postgres}"
  : "${POSTGRES_DB:=$POSTGRES_USER}"
  method="${POSTGRES_HOST_AUTH_METHOD:-scram-sha-256}"
  if [ -z "${POSTGRES_PASSWORD:-}" ] && [ "$method" != trust ]; then
    echo "error: the database is uninitialized and POSTGRES_PASSWORD is not set" >&2
    exit 1
  fi
  pwfile="$(mktemp)"
  printf '%s\\n' "${POSTGRES_PASSWORD:-}" > "$pwfile"
  # shellcheck disable=SC2086
  initdb -D "$PGDATA" --username="$POSTGRES_USER" --pwfile="$pwfile" --auth-local=trust \\
    --auth-host="$method" ${POSTGRES_INITDB_ARGS:-}
  rm -f "$pwfile"
  printf 'host all all all %s\\n' "$method" >> "$PGDATA/pg_hba.conf"
  printf "listen_addresses = '*'\\n" >> "$PGDATA/postgresql.conf"
  pg_ctl -D "$PGDATA" -o "-c listen_addresses=''" -w start
  if [ "$POSTGRES_DB" != postgres ]; then
    echo 'CREATE DATABASE :"db";' | psql -v ON_ERROR_STOP=1 -v db="$POSTGRES_DB" --username "$POSTGRES_USER" --dbname postgres
  fi
  for f in /docker-entrypoint-initdb.d/*; do
    case "$f" in
      *.sh) echo "running $f"; . "$f" ;;
      *.sql) echo "running $f"; psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" -f "$f" ;;
      *.sql.gz) echo "running $f"; gunzip -c "$f" | psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" ;;
      *) [ -e "$f" ] && echo "ignoring $f" ;;
    esac
  done
  pg_ctl -D "$PGDATA" -m fast -w stop
  echo "PostgreSQL init process complete; ready for start up."
fi
exec "$@"
"""


def postgres_standin(settings: Settings, client: docker.DockerClient, say: Say) -> str:
    tag = settings.engine.images.postgres_standin
    base = debian_base(settings, client, say)
    key = content_key(STANDIN_DOCKERFILE, STANDIN_ENTRYPOINT, base, image_id(client, base) or "")
    if content_label(client, tag) == key:
        return tag
    say(f"building the PostgreSQL stand-in {tag} (Debian's PostgreSQL {PG_MAJOR})")
    files: dict[str, bytes | Path] = {
        "Dockerfile": STANDIN_DOCKERFILE.encode(),
        "docker-entrypoint.sh": STANDIN_ENTRYPOINT.encode(),
    }
    build(client, tag, files, key=key, say=say, timeout=settings.engine.images.build_timeout, buildargs={"BASE": base})
    return tag


def postgres_image(settings: Settings, client: docker.DockerClient, wanted: str, say: Say) -> str:
    """wanted when it is here or pulls; else the stand-in (engine.images.fallback: debian)."""
    problem = pull(client, wanted)
    if problem is None:
        return wanted
    if settings.engine.images.fallback != "debian":
        raise UserError(f"image {wanted} is not here and could not be pulled ({problem}); set postgres.docker.image")
    major = re.match(r"^(?:.*/)?postgres:(\d+)", wanted)
    if major is None or int(major.group(1)) != PG_MAJOR:
        raise UserError(
            f"image {wanted} could not be pulled ({problem}), and the stand-in is PostgreSQL {PG_MAJOR} "
            f"(Debian {settings.engine.images.debian_suite}); set postgres.docker.image to postgres:{PG_MAJOR}"
        )
    say(f"{wanted} could not be pulled ({problem}): using the stand-in {settings.engine.images.postgres_standin}")
    return postgres_standin(settings, client, say)


def remove_cache(settings: Settings) -> None:
    shutil.rmtree(cache_dir(settings), ignore_errors=True)
