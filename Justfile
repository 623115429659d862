# DistriChat tasks. Run `just` to list them.

# One build cache for scripts/dev, scripts/test and these recipes.
export CARGO_TARGET_DIR := env_var_or_default("CARGO_TARGET_DIR", env_var("HOME") + "/.cache/districhat-target")

BIN := CARGO_TARGET_DIR + "/release/districhat"
CONTROL := "http://127.0.0.1:7000"

# List the recipes
default:
    @"{{just_executable()}}" --list --justfile "{{justfile()}}"

# Build the release binary
build:
    cargo build --release

# Start controls c1-c3 and nodes n1-n3 in the background (configs in cluster/, data, logs and pids in data/cluster/)
cluster: build
    cluster/up.sh

# Stop the local cluster
cluster-down:
    cluster/down.sh

# Show leader, term, members and nodes of the local cluster (add --watch to refresh)
cluster-status *ARGS:
    "{{BIN}}" status --control {{CONTROL}} {{ARGS}}

# Rehearse failures on the running cluster: kill-leader, kill-node, kill-replica and restart-all (ROUNDS each)
drill ROUNDS="3" *ARGS:
    "{{BIN}}" drill kill-leader --rounds {{ROUNDS}} --control {{CONTROL}} {{ARGS}}
    "{{BIN}}" drill kill-node --rounds {{ROUNDS}} --control {{CONTROL}} {{ARGS}}
    "{{BIN}}" drill kill-replica --rounds {{ROUNDS}} --control {{CONTROL}} {{ARGS}}
    "{{BIN}}" drill restart-all --rounds {{ROUNDS}} --control {{CONTROL}} {{ARGS}}

# Fault injection on a cluster of its own (needs root for --netns partitions): the six named scenarios, then random faults for SECONDS
chaos SECONDS="0" *ARGS: build
    "{{BIN}}" chaos --netns --seconds {{SECONDS}} {{ARGS}}

# fmt check, build, tests and clippy (installs missing system packages)
test:
    scripts/test

# Run 3 controls in one process on http://127.0.0.1:7000
dev *ARGS:
    scripts/dev {{ARGS}}
