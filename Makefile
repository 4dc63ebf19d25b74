# Two commands on a fresh Debian machine with Python 3.11:
#   make demo   run the most complete system on the embedded default configuration
#   make test   run the whole test suite
# Both create (or reuse) the virtualenv in .venv and install what they need.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Debian packages the product or its tests need at run time:
#   unixodbc  libodbc.so.2 for pyodbc (SQL Server historian)
#   socat     serial-device-server and pseudo-terminal plumbing in tests and the demo
#   tmux      drives the operator console in a real terminal in tests
#   mbpoll    a third-party Modbus master: reads the Modbus bridge in tests and the demo
#   openssl   makes the throwaway CA and certificates of the Modbus/TCP Security test
#   openssh-server  sshd of the console's end-to-end test (an operator over SSH with ForceCommand)
SYSTEM_PACKAGES := unixodbc socat tmux mbpoll openssl openssh-server
PYTEST_ARGS ?=
DEMO_ARGS ?=

.PHONY: demo test system venv bench clean

demo: venv
	$(BIN)/st2000r demo $(DEMO_ARGS)

test: venv
	$(BIN)/python -m pytest -c tests/pytest.ini --rootdir=. $(PYTEST_ARGS)

bench: venv
	@for b in bench/bench_*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done

system:
	@missing=""; for p in $(SYSTEM_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q 'install ok installed' || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing Debian packages:$$missing"; \
	    DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null || exit 1; \
	    case " $$missing " in *" openssh-server "*) \
	      if command -v systemctl >/dev/null 2>&1 && systemctl disable --now ssh.service ssh.socket >/dev/null 2>&1; then \
	        echo "openssh-server is only for the console's SSH test: its system service is left disabled"; fi;; \
	    esac; \
	  else \
	    echo "These Debian packages are needed:$$missing"; \
	    echo "Install them as root:  sudo apt-get install$$missing"; exit 1; \
	  fi; \
	fi

venv: system $(VENV)/.installed

$(VENV)/.installed: setup.py
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV) || { \
	  echo "Cannot create a virtualenv: install Debian's python3-venv (sudo apt-get install python3-venv)"; exit 1; }
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'
	@touch $@

clean:
	rm -rf $(VENV) build *.egg-info .hypothesis
