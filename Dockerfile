# The billing service image: runs as a non-root user, reports health through /readyz, stops on SIGTERM.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    BILLING_REPORTS_DIR=/var/lib/billing/reports

RUN groupadd --system --gid 10001 billing \
 && useradd --system --uid 10001 --gid billing --home-dir /app --shell /usr/sbin/nologin billing

WORKDIR /app
COPY setup.py pyproject.toml README.md constraints.txt ./
COPY billing ./billing
COPY lua ./lua
COPY reports ./reports
# Runtime dependencies only, at the versions the tests pass with (constraints.txt, `make lock`).
# lua/ and reports/ install with the package as billing.lua and billing.reports (see setup.py).
RUN pip install --no-cache-dir -c constraints.txt . \
 && mkdir -p /var/lib/billing/reports \
 && chown -R billing:billing /var/lib/billing

USER billing
EXPOSE 8080
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
  CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8080/readyz', timeout=2).status != 200)"]
CMD ["billing", "serve", "--host", "0.0.0.0", "--port", "8080", "--workers", "2"]
