# CPU image serving the bundled default model with TorchServe, as `purifier serve` does.
#   docker build -t purifier .
#   docker run --rm -p 127.0.0.1:8080:8080 purifier
# Inside the container the inference port listens on 0.0.0.0 (the container's own network
# namespace); publish it on the host's loopback as above. Management stays on 127.0.0.1.
# The inference token is in /home/purifier/serve/key_file.json:
#   docker exec CONTAINER python -c "import json;print(json.load(open('/home/purifier/serve/key_file.json'))['inference']['key'])"
FROM python:3.11-slim-bookworm

RUN apt-get update \
 && apt-get install -y --no-install-recommends openjdk-17-jre-headless \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --create-home --uid 10001 purifier

WORKDIR /app
COPY pyproject.toml README.md ./
COPY purifier ./purifier
COPY training ./training
COPY export ./export
COPY serving ./serving
COPY cli ./cli
COPY bundles/fmnist-default ./bundles/fmnist-default
COPY examples ./examples
RUN pip install --no-cache-dir -e . && chown -R purifier /app

USER purifier
ENV PURIFIER_SERVE_DIR=/home/purifier/serve
HEALTHCHECK --interval=30s --timeout=10s --start-period=120s CMD ["purifier", "serve", "--status"]
CMD ["purifier", "serve", "--foreground", "--host", "0.0.0.0"]
