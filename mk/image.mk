# The container image (issue 11). Included by the main Makefile.
#   make image [IMAGE=taskproc:0.1.0]   docker when a docker engine answers, podman otherwise (scripts/image.sh)
# With podman and no registry, the base image is built locally by scripts/base-image.sh (debootstrap) once and
# reused; tests/container runs the image as the chart does, so `make test` builds it first.

IMAGE ?= taskproc:$(shell sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml | head -n1)

.PHONY: image

TEST_DEPS += image

image:  ## build the image (docker if a docker engine answers, else podman); IMAGE=name:tag
	bash scripts/image.sh $(IMAGE)
