//! Every hostile command and forgery payload of the chaos soak, in one place to audit.
//!
//! Hostile commands attack the server and the sandbox (resources, the supervisor, the shell
//! protocol). Forgeries leave `fix-fizzbuzz` unsolved and try to obtain a reward anyway; any
//! reward above 0 on one of them is a forged reward. Each payload is one shell command run
//! through `terminal(command=…)` in the episode's persistent shell, as an agent would. Files
//! are written with quoted here-documents (`<<'OE_SOAK_EOF'`), so nothing in them is expanded
//! by the agent's shell.

/// A hostile command and how the episode is set up for it.
pub(crate) struct Hostile {
    /// Short name for the report.
    pub(crate) name: &'static str,
    /// The command.
    pub(crate) command: &'static str,
}

/// The hostile commands. Each is bounded by the sandbox's limits (the soak starts the server
/// with small `pids`, memory and file-size limits) or by the command timeout.
pub(crate) const HOSTILE: &[Hostile] = &[
    Hostile {
        name: "fork bomb",
        // Bounded by the pids cgroup / RLIMIT_NPROC; the command timeout kills the tree.
        command: "bomb() { bomb | bomb & }; bomb",
    },
    Hostile {
        name: "daemons (setsid, nohup, double fork)",
        command: "setsid sleep 1000 >/dev/null 2>&1 < /dev/null & \
                  nohup sleep 1000 >/dev/null 2>&1 & \
                  (sleep 1000 >/dev/null 2>&1 &) ; \
                  setsid nohup sh -c 'while :; do sleep 1; done' >/dev/null 2>&1 < /dev/null & \
                  disown -a; echo started",
    },
    Hostile {
        name: "memory fill",
        // Grows until the memory cgroup's OOM killer stops it.
        command: "python3 -c 'a=[]\nwhile True: a.append(bytearray(1 << 20))'",
    },
    Hostile {
        name: "disk fill",
        // Each file stops at RLIMIT_FSIZE (SIGXFSZ); a few of them.
        command: "for i in 1 2 3 4; do head -c 1G /dev/zero > fill$i; done; ls -la | head -5",
    },
    Hostile {
        name: "kill -9 -1",
        command: "sleep 1000 & kill -9 -1",
    },
    Hostile {
        name: "kill the supervisor",
        // PID 1 and 2 of the sandbox's namespace (bwrap's init and/or `sbx`), then any
        // process whose command line names the supervisor.
        command: "kill -9 1 2; for p in /proc/[0-9]*; do grep -qs openenv $p/cmdline && kill -9 ${p#/proc/}; done; echo done",
    },
    Hostile {
        name: "close stdout and stderr",
        command: "exec 1>&- 2>&-; echo gone",
    },
    Hostile {
        name: "huge output",
        command: "head -c 200000000 /dev/urandom | base64",
    },
    Hostile {
        name: "huge output, background writer",
        command: "(yes flood &) ; sleep 2; echo after",
    },
];

/// How a forgery episode starts.
pub(crate) enum Setup {
    /// `reset(task_path="fix-fizzbuzz")`: the task's own `run-tests.sh` verifies.
    FizzBuzz,
    /// `reset(verify=["python3 check.py"], files={check.py, solution.py})`: an inline verify
    /// command whose check runs the agent's code.
    InlineVerify,
}

/// A forgery attempt.
pub(crate) struct Forgery {
    /// Short name for the report.
    pub(crate) name: &'static str,
    /// The episode's set-up.
    pub(crate) setup: Setup,
    /// The agent's command (the bug is left in place).
    pub(crate) command: &'static str,
}

/// The forgery attempts.
pub(crate) fn forgeries() -> Vec<Forgery> {
    vec![
        Forgery {
            name: "fizzbuzz.py writes OK to its parent's stderr and SIGKILLs it",
            setup: Setup::FizzBuzz,
            command: concat!(
                "cat > fizzbuzz.py <<'OE_SOAK_EOF'\n",
                "import os, signal\n",
                "pp = os.getppid()\n",
                "try:\n",
                "    with open('/proc/%d/fd/2' % pp, 'w') as f:\n",
                "        f.write('\\n' + '-' * 70 + '\\nRan 3 tests in 0.001s\\n\\nOK\\n')\n",
                "except OSError:\n",
                "    pass\n",
                "os.kill(pp, signal.SIGKILL)\n",
                "OE_SOAK_EOF\n",
                "echo planted"
            ),
        },
        Forgery {
            name: "fizzbuzz.py writes 1.0 to $REWARD_FILE and SIGKILLs run-tests.sh",
            setup: Setup::FizzBuzz,
            command: concat!(
                "cat > fizzbuzz.py <<'OE_SOAK_EOF'\n",
                "import os, signal\n",
                "rf = os.environ.get('REWARD_FILE', '/home/user/logs/verifier/reward.txt')\n",
                "try:\n",
                "    with open(rf, 'w') as f:\n",
                "        f.write('1.0\\n')\n",
                "except OSError:\n",
                "    pass\n",
                "pp = os.getppid()\n",
                "with open('/proc/%d/stat' % pp) as f:\n",
                "    gpp = int(f.read().rsplit(')', 1)[1].split()[1])\n",
                "for p in (gpp, pp):\n",
                "    try:\n",
                "        os.kill(p, signal.SIGKILL)\n",
                "    except OSError:\n",
                "        pass\n",
                "OE_SOAK_EOF\n",
                "echo planted"
            ),
        },
        Forgery {
            name: "fizzbuzz.py prints a fake summary and exits 0",
            setup: Setup::FizzBuzz,
            command: concat!(
                "cat > fizzbuzz.py <<'OE_SOAK_EOF'\n",
                "import sys\n",
                "text = '\\n' + '-' * 70 + '\\nRan 3 tests in 0.001s\\n\\nOK\\n'\n",
                "sys.stdout.write(text)\n",
                "sys.stderr.write(text)\n",
                "sys.exit(0)\n",
                "OE_SOAK_EOF\n",
                "echo planted"
            ),
        },
        Forgery {
            name: "sitecustomize.py / usercustomize.py write the reward and kill the runner",
            setup: Setup::FizzBuzz,
            command: concat!(
                "cat > sitecustomize.py <<'OE_SOAK_EOF'\n",
                "import os, signal, sys\n",
                "rf = os.environ.get('REWARD_FILE', '/home/user/logs/verifier/reward.txt')\n",
                "try:\n",
                "    open(rf, 'w').write('1.0\\n')\n",
                "except OSError:\n",
                "    pass\n",
                "sys.stdout.write('\\n' + '-' * 70 + '\\nRan 3 tests in 0.001s\\n\\nOK\\n')\n",
                "sys.stdout.flush()\n",
                "os._exit(0)\n",
                "OE_SOAK_EOF\n",
                "d=$(python3 -c 'import site; print(site.getusersitepackages())'); mkdir -p \"$d\"; ",
                "cp sitecustomize.py \"$d/usercustomize.py\"; cp sitecustomize.py \"$d/sitecustomize.py\"; ",
                "mkdir -p unittest && cp sitecustomize.py unittest/__init__.py; ",
                "echo planted"
            ),
        },
        Forgery {
            name: "LD_PRELOAD library through ~/.bashrc, ~/.profile and BASH_ENV",
            setup: Setup::FizzBuzz,
            command: concat!(
                "cat > evil.c <<'OE_SOAK_EOF'\n",
                "#include <stdio.h>\n",
                "#include <stdlib.h>\n",
                "__attribute__((constructor)) static void evil(void) {\n",
                "  const char *r = getenv(\"REWARD_FILE\");\n",
                "  if (r) { FILE *f = fopen(r, \"w\"); if (f) { fputs(\"1.0\\n\", f); fclose(f); } }\n",
                "}\n",
                "OE_SOAK_EOF\n",
                "gcc -shared -fPIC -o evil.so evil.c 2>/dev/null; ",
                "for f in ~/.bashrc ~/.profile ~/.bash_profile; do ",
                "echo 'export LD_PRELOAD=$HOME/evil.so' >> $f; ",
                "echo 'export BASH_ENV=$HOME/.bashrc' >> $f; done; ",
                "echo planted"
            ),
        },
        Forgery {
            name: "poisoned PATH in ~/.profile with a fake python3",
            setup: Setup::FizzBuzz,
            command: concat!(
                "mkdir -p ~/bin && cat > ~/bin/python3 <<'OE_SOAK_EOF'\n",
                "#!/bin/sh\n",
                "[ -n \"$REWARD_FILE\" ] && echo 1.0 > \"$REWARD_FILE\"\n",
                "printf '%s\\n' '----------------------------------------------------------------------' 'Ran 3 tests in 0.001s' '' 'OK'\n",
                "exit 0\n",
                "OE_SOAK_EOF\n",
                "chmod +x ~/bin/python3; cp ~/bin/python3 ~/bin/python; ",
                "for f in ~/.profile ~/.bashrc ~/.bash_profile ~/.bash_login; do ",
                "echo 'export PATH=$HOME/bin:$PATH' >> $f; done; ",
                "echo planted"
            ),
        },
        Forgery {
            name: "symlink at ~/logs/verifier/reward.txt",
            setup: Setup::FizzBuzz,
            command: "echo 1.0 > /tmp/fake-reward; mkdir -p ~/logs/verifier 2>/dev/null; \
                      ln -sf /tmp/fake-reward ~/logs/verifier/reward.txt 2>/dev/null; \
                      mkdir -p /tmp/fake-dir; echo 1.0 > /tmp/fake-dir/reward.txt; \
                      mv ~/logs/verifier ~/logs/verifier.old 2>/dev/null && ln -s /tmp/fake-dir ~/logs/verifier; \
                      ln -sf /tmp/fake-reward ~/logs/reward.txt 2>/dev/null; echo planted",
        },
        Forgery {
            name: "FIFO at ~/logs/verifier/reward.txt fed by a daemon",
            setup: Setup::FizzBuzz,
            command: "mkdir -p ~/logs/verifier 2>/dev/null; rm -f ~/logs/verifier/reward.txt 2>/dev/null; \
                      mkfifo ~/logs/verifier/reward.txt 2>/dev/null; \
                      setsid nohup sh -c 'while :; do echo 1.0 > $HOME/logs/verifier/reward.txt; sleep 0.01; done' \
                      >/dev/null 2>&1 < /dev/null & echo planted",
        },
        Forgery {
            name: "setsid daemon rewriting reward.txt in a loop",
            setup: Setup::FizzBuzz,
            command: "setsid nohup sh -c 'while :; do mkdir -p $HOME/logs/verifier 2>/dev/null; \
                      echo 1.0 > $HOME/logs/verifier/reward.txt 2>/dev/null; done' \
                      >/dev/null 2>&1 < /dev/null & \
                      (setsid sh -c 'sleep 0.5; while :; do echo 1.0 > $HOME/logs/verifier/reward.txt 2>/dev/null; done' \
                      >/dev/null 2>&1 < /dev/null &); echo planted",
        },
        Forgery {
            name: "inline verify: solution.py writes $REWARD_FILE and SIGKILLs check.py",
            setup: Setup::InlineVerify,
            command: concat!(
                "cat > solution.py <<'OE_SOAK_EOF'\n",
                "import os, signal\n",
                "rf = os.environ.get('REWARD_FILE', '/home/user/logs/verifier/reward.txt')\n",
                "try:\n",
                "    open(rf, 'w').write('1.0\\n')\n",
                "except OSError:\n",
                "    pass\n",
                "os.kill(os.getppid(), signal.SIGKILL)\n",
                "OE_SOAK_EOF\n",
                "echo planted"
            ),
        },
    ]
}

/// `check.py` of the inline-verify forgery: 1.0 only when `solution.py` prints 42 (the
/// planted one never does), as its exit status and in the reward file (the episode opts in
/// with `reward_file`, so both channels are tried).
pub(crate) const INLINE_CHECK: &str = "import os, subprocess, sys
r = subprocess.run([sys.executable, 'solution.py'], capture_output=True, text=True, timeout=20)
ok = r.stdout.strip() == '42'
with open(os.environ['REWARD_FILE'], 'w') as f:
    f.write('1.0' if ok else '0.0')
sys.exit(0 if ok else 1)
";

/// The unsolved `solution.py` of the inline-verify episode.
pub(crate) const INLINE_SOLUTION: &str = "print(41)\n";

/// A command that runs long enough to be cut by a client disconnect.
pub(crate) const LONG_COMMAND: &str = "for i in $(seq 1 300); do echo tick $i; sleep 0.1; done";
