# Sourced by the cluster files' start commands before `ray start`: raise this shell's
# open-files limit to what Ray wants (65536), or as far as the hard limit allows, and say
# so when that is lower (a `ulimit -n 65536` above the hard limit fails, and with it
# `ray up`). Raise the hard limit in /etc/security/limits.conf (nofile) or the service
# unit (LimitNOFILE) of the machine.
clarlab_wanted_open_files=65536
clarlab_hard_open_files=$(ulimit -Hn)
if [ "$clarlab_hard_open_files" != unlimited ] &&
    [ "$clarlab_hard_open_files" -lt "$clarlab_wanted_open_files" ]; then
    echo "clarlab: the open-files hard limit on $(hostname) is $clarlab_hard_open_files," \
        "below the $clarlab_wanted_open_files Ray wants; using $clarlab_hard_open_files" \
        "(raise nofile in /etc/security/limits.conf for large sweeps)" >&2
    clarlab_wanted_open_files=$clarlab_hard_open_files
fi
ulimit -n "$clarlab_wanted_open_files"
