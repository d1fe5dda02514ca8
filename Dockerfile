# estkit in a container: Debian slim Python, a non-root user, the data directory as a volume.
#   docker build -t estkit .
#   docker run -d -p 8443:8443 -v estkit-data:/var/lib/estkit -e ESTKIT_HOSTNAME=est.example.com estkit
# The first start initialises a new CA in the volume (deploy/docker/entrypoint.sh); later starts serve it.
FROM python:3.11-slim-bookworm

RUN useradd --system --uid 10001 --user-group --home-dir /var/lib/estkit --shell /usr/sbin/nologin estkit \
    && install -d -o estkit -g estkit -m 0700 /var/lib/estkit

WORKDIR /opt/estkit
COPY pyproject.toml README.md ./
COPY src ./src
RUN pip install --no-cache-dir . && rm -rf /opt/estkit/src /root/.cache
COPY deploy/docker/entrypoint.sh deploy/docker/healthcheck.py /usr/local/bin/

USER estkit
ENV ESTKIT_DIR=/var/lib/estkit \
    ESTKIT_LISTEN=0.0.0.0:8443
VOLUME ["/var/lib/estkit"]
EXPOSE 8443
# EST-coaps (RFC 9148) when server.coap_listen or --coap-listen asks for it
EXPOSE 5684/udp
# Load balancers and Docker alike ask /readyz: the store answers, every CA key signs, TLS is valid.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "/usr/local/bin/healthcheck.py"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/entrypoint.sh"]
