# A stand-in for the MinIO image in the compose test, where no registry image
# can be pulled: nanio, an S3 server from PyPI that checks SigV4 signatures.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm
FROM ${PYTHON_IMAGE}
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python3 -m venv /opt/s3 && /opt/s3/bin/pip install nanio==0.1.7
EXPOSE 9000
CMD ["/opt/s3/bin/nanio", "serve", "--host", "0.0.0.0", "--port", "9000", "--data-dir", "/data", "--no-access-log"]
