# bash completion for ulp (installed as
# PREFIX/share/bash-completion/completions/ulp). Self-contained: needs only
# bash's own `compgen`, not the bash-completion package's helpers.
# Generated from ulp's option definitions (crates/ulp/src/completion.rs):
# do not edit.

_ulp_pids() {
    # Process ids and names of the processes that have the runtime mapped.
    local d
    for d in /proc/[0-9]*; do
        if grep -qs 'libpulp\.so' "$d/maps" 2>/dev/null; then
            printf '%s\n' "${d#/proc/}"
            cat "$d/comm" 2>/dev/null
        fi
    done
}

_ulp() {
    local cur prev words cword
    cur=${COMP_WORDS[COMP_CWORD]}
    prev=""
    [ "$COMP_CWORD" -gt 0 ] && prev=${COMP_WORDS[COMP_CWORD-1]}
    local commands="trigger patches messages check set_patchable post livepatchable packer dump extract"
    local common="-h --help -v --verbose -q --quiet --json -V --version"

    # The command word may stand anywhere: find it.
    local cmd="" i w
    for ((i = 1; i < ${#COMP_WORDS[@]}; i++)); do
        [ "$i" -eq "$COMP_CWORD" ] && continue
        w=${COMP_WORDS[i]}
        case " $commands " in
            *" $w "*) cmd=$w; break ;;
        esac
    done

    # Values of options.
    case "$prev" in
        -p|--process)
            COMPREPLY=($(compgen -W "$(_ulp_pids)" -- "$cur"))
            return 0 ;;
        --runtime|--revert-all|-R|--root|-t|--target|-o|--output)
            COMPREPLY=($(compgen -f -- "$cur"))
            return 0 ;;
        -j|--jobs|-r|--retries|--timeout)
            COMPREPLY=()
            return 0 ;;
        -u|--user)
            COMPREPLY=($(compgen -u -- "$cur"))
            return 0 ;;
        -l|--livepatch)
            COMPREPLY=($(compgen -f -X '!*.so*' -- "$cur") $(compgen -d -- "$cur"))
            return 0 ;;
    esac

    local opts=""
    case "$cmd" in
        trigger) opts="-p --process --load-runtime --runtime --revert --revert-all -j --jobs -r --retries --timeout -R --root --disable-seccomp --force -u --user" ;;
        patches) opts="-p --process -u --user -b --buildid --only-livepatched" ;;
        messages|check) opts="-p --process" ;;
        set_patchable) opts="-p --process -u --user --load-runtime --runtime --force" ;;
        livepatchable) opts="--functions" ;;
        packer) opts="-l --livepatch -t --target --force" ;;
        dump) opts="--revert -b --buildid" ;;
        extract) opts="-o --output" ;;
    esac

    if [[ "$cur" == -* ]]; then
        COMPREPLY=($(compgen -W "$opts $common" -- "$cur"))
        return 0
    fi
    case "$cmd" in
        "")
            COMPREPLY=($(compgen -W "$commands" -- "$cur")) ;;
        trigger|check|dump)
            COMPREPLY=($(compgen -f -X '!*.so*' -- "$cur") $(compgen -d -- "$cur")) ;;
        patches|messages)
            COMPREPLY=() ;;
        set_patchable)
            COMPREPLY=($(compgen -W "enable disable" -- "$cur")) ;;
        packer)
            COMPREPLY=($(compgen -f -X '!*.dsc' -- "$cur") $(compgen -d -- "$cur")) ;;
        *)
            COMPREPLY=($(compgen -f -- "$cur")) ;;
    esac
    return 0
}

complete -o filenames -F _ulp ulp
