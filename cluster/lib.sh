# Shared by cluster/up.sh and cluster/down.sh (sourced, not run).

# True if PID is alive and is a districhat process.
is_districhat() {
    local pid="$1"
    kill -0 "$pid" 2>/dev/null || return 1
    if [ -r "/proc/$pid/cmdline" ]; then
        tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q districhat
    else
        ps -p "$pid" -o command= 2>/dev/null | grep -q districhat
    fi
}
