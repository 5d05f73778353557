package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"regexp"
	"strconv"
	"strings"
	"testing"
)

// A README block is a fenced block of README.md. The line just before
// its fence may say how the test takes it:
//
//	<!-- readme-test: skip (why) -->      not run
//	<!-- readme-test: banner -->          compared with the server's banner
//	<!-- readme-test: background (...) --> run in the background (a
//	                                      stream); the next blocks run once
//	                                      it has printed something
//	<!-- readme-test: expect-in-background "text" --> run; then every
//	                                      background block must print text
//
// Other sh blocks run in order, in one shell (set -euo pipefail), so that
// what one block sets the next ones use. Lines of a block that start with
// "$ " are commands whose output is the lines below them, and must be.
type readmeBlock struct {
	line   int    // of the opening fence, 1-based
	lang   string // "sh", or "" for a plain block
	mark   string // the readme-test marker's words, or ""
	text   string
	expect string // of expect-in-background
}

var markRE = regexp.MustCompile(`^<!-- readme-test: ([a-z-]+)(?: (.*?))? -->$`)

func readmeBlocks(t *testing.T) []readmeBlock {
	t.Helper()
	f, err := os.Open("README.md")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var blocks []readmeBlock
	var cur *readmeBlock
	prev := ""
	sc := bufio.NewScanner(f)
	for n := 1; sc.Scan(); n++ {
		line := sc.Text()
		switch {
		case cur == nil && strings.HasPrefix(line, "```"):
			cur = &readmeBlock{line: n, lang: strings.TrimPrefix(line, "```")}
			if m := markRE.FindStringSubmatch(prev); m != nil {
				cur.mark = m[1]
				if cur.mark == "expect-in-background" {
					cur.expect = strings.Trim(m[2], `"`)
				}
			}
		case cur != nil && line == "```":
			blocks = append(blocks, *cur)
			cur = nil
		case cur != nil:
			cur.text += line + "\n"
		}
		prev = line
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	for _, b := range blocks {
		switch b.mark {
		case "", "skip", "banner", "background", "expect-in-background":
		default:
			t.Errorf("README.md:%d: unknown readme-test marker %q", b.line, b.mark)
		}
	}
	return blocks
}

// tool finds a program the README uses: on the PATH, or named by the
// environment (make test sets PARLEY_TEST_GRPCURL).
func tool(t *testing.T, name, env string) string {
	t.Helper()
	if p := os.Getenv(env); env != "" && p != "" {
		return p
	}
	p, err := exec.LookPath(name)
	if err != nil {
		t.Skipf("%s is not installed (make test installs it)", name)
	}
	return p
}

// TestREADME runs the README's shell blocks in order against a fresh
// server started as `go run .` starts it (in a fresh directory, embedded
// stores under ./data), with its address in place of localhost:8080: the
// README runs as written, section after section.
func TestREADME(t *testing.T) {
	bash := tool(t, "bash", "")
	for _, name := range []string{"curl", "jq"} {
		tool(t, name, "")
	}
	grpcurl := tool(t, "grpcurl", "PARLEY_TEST_GRPCURL")
	blocks := readmeBlocks(t)

	dir := t.TempDir()
	t.Chdir(dir)
	base, banner, _ := startRun(t, nil, "-addr", "127.0.0.1:0", "-admin-addr", "127.0.0.1:0")
	addr := strings.TrimPrefix(base, "http://")
	adminAddr := regexp.MustCompile(`Admin .* on http://(\S+)/metrics`).FindStringSubmatch(banner)
	if adminAddr == nil {
		t.Fatalf("no admin listener in the banner:\n%s", banner)
	}
	local := func(s string) string {
		return strings.NewReplacer("localhost:8080", addr, "127.0.0.1:9091", adminAddr[1]).Replace(s)
	}

	var script strings.Builder
	script.WriteString("set -euo pipefail\nbg=()\ntrap 'kill ${bg[@]} 2>/dev/null || true' EXIT\n")
	type check struct {
		block  readmeBlock
		cmd    string
		output string
	}
	var checks []check
	var background []string
	for i, b := range blocks {
		where := fmt.Sprintf("README.md:%d", b.line)
		switch {
		case b.mark == "banner":
			// The README shows the banner of a server without -admin-addr.
			var got []string
			for _, l := range strings.Split(strings.TrimSpace(banner), "\n") {
				if !strings.HasPrefix(l, "Admin ") {
					got = append(got, l)
				}
			}
			if want := local(strings.TrimSpace(b.text)); strings.Join(got, "\n") != want {
				t.Errorf("%s: the banner is\n%s\nnot\n%s", where, strings.Join(got, "\n"), want)
			}
			continue
		case b.mark == "skip" || (b.lang != "sh" && b.lang != "bash"):
			continue
		}
		fmt.Fprintf(&script, "printf '\\n::block %d::\\n'\n", i)
		switch b.mark {
		case "background":
			out := fmt.Sprintf("background-%d.out", i)
			background = append(background, out)
			fmt.Fprintf(&script, "( %s ) > %s 2>&1 &\nbg+=($!)\n", local(b.text), out)
			fmt.Fprintf(&script, "for _ in $(seq 300); do [ -s %[1]s ] && break; sleep 0.1; done\n[ -s %[1]s ] || { echo '%[2]s: the stream printed nothing in 30 s' >&2; exit 1; }\n", out, where)
			continue
		}
		if strings.HasPrefix(b.text, "$ ") {
			// Commands and their output.
			for _, part := range strings.Split(strings.TrimPrefix(b.text, "$ "), "\n$ ") {
				cmd, output, _ := strings.Cut(part, "\n")
				fmt.Fprintf(&script, "printf '\\n::check %d::\\n'\n%s\n", len(checks), local(cmd))
				checks = append(checks, check{block: b, cmd: cmd, output: strings.TrimSpace(output)})
			}
		} else {
			script.WriteString(local(b.text))
		}
		if b.expect != "" {
			for _, out := range background {
				fmt.Fprintf(&script, "for _ in $(seq 300); do grep -q %[1]q %[2]s && break; sleep 0.1; done\ngrep -q %[1]q %[2]s || { echo '%[3]s: a stream did not show %[1]s' >&2; cat %[2]s >&2; exit 1; }\n", b.expect, out, where)
			}
		}
	}
	script.WriteString("printf '\\n::end::\\n'\n")

	cmd := exec.Command(bash, "-c", script.String())
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "PATH="+filepath.Dir(grpcurl)+string(os.PathListSeparator)+os.Getenv("PATH"))
	var stderr strings.Builder
	cmd.Stderr = &stderr
	stdout, err := cmd.Output()
	if err != nil {
		t.Fatalf("the README's commands failed: %v\nstderr:\n%s\nstdout:\n%s", err, stderr.String(), stdout)
	}

	// Each block's output, and each checked command's.
	blockOut := map[int]string{}
	checkOut := map[int]string{}
	markerRE := regexp.MustCompile(`^::(block|check) (\d+)::\n$`)
	into := map[string]map[int]string{"block": blockOut, "check": checkOut}
	var out map[int]string
	var n int
	for _, l := range strings.SplitAfter(string(stdout), "\n") {
		if m := markerRE.FindStringSubmatch(l); m != nil {
			out, n = into[m[1]], atoi(t, m[2])
			continue
		}
		if out != nil {
			out[n] += l
		}
	}
	for i, c := range checks {
		if got := strings.TrimSpace(checkOut[i]); c.output != "" && !sameOutput(got, local(c.output)) {
			t.Errorf("README.md:%d: `%s` printed\n%s\nnot\n%s", c.block.line, c.cmd, got, c.output)
		}
	}
	// A JSON error in a block's output is one the block expects, in a
	// comment such as # {"code":"permission_denied",...}.
	codeRE := regexp.MustCompile(`"code":"([a-z_]+)"`)
	for i, b := range blocks {
		for _, m := range codeRE.FindAllStringSubmatch(blockOut[i], -1) {
			if !strings.Contains(b.text, `# {"code":"`+m[1]+`"`) {
				t.Errorf("README.md:%d: a call answered an error the README does not show: %s\n%s", b.line, m[0], blockOut[i])
			}
		}
	}
	if !strings.Contains(string(stdout), "::end::") {
		t.Errorf("the commands stopped before the end:\n%s", stdout)
	}
	if t.Failed() {
		t.Logf("stderr:\n%s", stderr.String())
	}
}

// sameOutput compares a command's output with the README's: as JSON
// values where both are JSON (protojson varies its spacing from build to
// build, on purpose), else as text.
func sameOutput(got, want string) bool {
	var g, w any
	if json.Unmarshal([]byte(got), &g) == nil && json.Unmarshal([]byte(want), &w) == nil {
		return reflect.DeepEqual(g, w)
	}
	return got == want
}

func atoi(t *testing.T, s string) int {
	t.Helper()
	n, err := strconv.Atoi(s)
	if err != nil {
		t.Fatal(err)
	}
	return n
}
