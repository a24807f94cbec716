#!/usr/bin/env bash
# Install what the node and its tests need on a fresh Debian machine: the DICOM peers from Debian
# (dcmtk, Orthanc with DICOMweb, dicom3tools; for the tests also Chromium and PostgreSQL) and a
# Python venv. DICOMNODE_NODE_ONLY=1 (scripts/serve.sh) installs only what the node needs.
# Safe to run again: it skips what is already there.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v storescu >/dev/null || need_apt+=(dcmtk)
command -v dciodvfy >/dev/null || need_apt+=(dicom3tools)
command -v Orthanc >/dev/null || need_apt+=(orthanc)
[ -f /usr/share/orthanc/plugins/libOrthancDicomWeb.so ] || need_apt+=(orthanc-dicomweb)
if [ "${DICOMNODE_NODE_ONLY:-0}" != 1 ]; then  # peers only the tests use
  ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 || need_apt+=(postgresql)
  command -v chromium >/dev/null || need_apt+=(chromium)
  command -v docker-compose >/dev/null || need_apt+=(docker-compose)  # `config` checks deploy/
  [ -x /usr/sbin/haproxy ] || need_apt+=(haproxy)  # runs deploy/haproxy/haproxy.cfg's DICOM health check (tests/deploy)
  [ -x /usr/sbin/rsyslogd ] || command -v rsyslogd >/dev/null || need_apt+=(rsyslog)  # the ATNA audit repository (tests/e2e/test_atna.py)
  ls /usr/lib/*/rsyslog/lmnsd_gtls.so >/dev/null 2>&1 || need_apt+=(rsyslog-gnutls)  # its TLS (RFC 5425)
fi
if [ ${#need_apt[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi

if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
# constraints.txt pins torch to the CPU build; any other torch pulls GBs of CUDA wheels
extras=test,postgres
[ "${DICOMNODE_NODE_ONLY:-0}" != 1 ] || extras=postgres
.venv/bin/pip install -q --disable-pip-version-check -c constraints.txt -e ".[$extras]"
if [ "${DICOMNODE_NODE_ONLY:-0}" != 1 ]; then
  # a real Triton Inference Server for tests/inference/test_triton.py: only the wheel's tritonserver
  # binary is used, so no dependencies (it declares numpy<2, which would downgrade the node's stack)
  .venv/bin/pip install -q --disable-pip-version-check --no-deps "nvidia-pytriton==0.7.0"
fi
