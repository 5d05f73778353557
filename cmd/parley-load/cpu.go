package main

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"
)

// cpuTarget is a server-side process whose CPU the tool accounts for,
// with every process descended from it.
type cpuTarget struct {
	name string
	pid  int
}

// parseCPUPids reads -cpu-pids: name=pid,name=pid,...
func parseCPUPids(s string) ([]cpuTarget, error) {
	var out []cpuTarget
	for _, part := range strings.Split(s, ",") {
		if part = strings.TrimSpace(part); part == "" {
			continue
		}
		name, pid, ok := strings.Cut(part, "=")
		n, err := strconv.Atoi(pid)
		if !ok || name == "" || err != nil || n <= 0 {
			return nil, fmt.Errorf("-cpu-pids: want name=pid, got %q", part)
		}
		if _, err := os.Stat(fmt.Sprintf("/proc/%d/stat", n)); err != nil {
			return nil, fmt.Errorf("-cpu-pids: %s: %w", name, err)
		}
		out = append(out, cpuTarget{name, n})
	}
	return out, nil
}

// userHZ is the unit of the times in /proc/<pid>/stat (USER_HZ, which
// Linux fixes at 100 for user space on every common architecture).
const userHZ = 100

// procTimes is what the tool reads of one /proc/<pid>/stat.
type procTimes struct {
	ppid int
	// own is utime+stime: every thread of the process, live or exited.
	// reaped is cutime+cstime: its children that exited and were waited
	// for (a PostgreSQL backend that ends during a run lands here, in the
	// postmaster's).
	own, reaped int64
}

// readProcs reads every process's parent and CPU times.
func readProcs() (map[int]procTimes, error) {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return nil, err
	}
	out := make(map[int]procTimes, len(entries))
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile("/proc/" + e.Name() + "/stat")
		if err != nil {
			continue // it exited meanwhile
		}
		// The command name, in parentheses, may hold spaces and ')'.
		i := strings.LastIndexByte(string(b), ')')
		if i < 0 {
			continue
		}
		f := strings.Fields(string(b[i+1:]))
		if len(f) < 15 {
			continue
		}
		// f[0] is field 3 of proc(5) (state): field k is f[k-3].
		num := func(k int) int64 { n, _ := strconv.ParseInt(f[k-3], 10, 64); return n }
		out[pid] = procTimes{ppid: int(num(4)), own: num(14) + num(15), reaped: num(16) + num(17)}
	}
	return out, nil
}

// cpuSample is the CPU each target and its descendants have used so far.
type cpuSample map[string]time.Duration

// sampleCPU sums, for each target, the times of the process, of every
// process whose parent chain leads to it, and of their reaped children.
// A descendant that exits between two samples moves its time into its
// parent's reaped time, so differences between samples stay whole (only
// one whose parent never waits for it is lost).
func sampleCPU(targets []cpuTarget) (cpuSample, error) {
	if len(targets) == 0 {
		return nil, nil
	}
	procs, err := readProcs()
	if err != nil {
		return nil, err
	}
	children := map[int][]int{}
	for pid, p := range procs {
		children[p.ppid] = append(children[p.ppid], pid)
	}
	out := cpuSample{}
	for _, t := range targets {
		if _, ok := procs[t.pid]; !ok {
			return nil, fmt.Errorf("cpu: %s (pid %d) is gone", t.name, t.pid)
		}
		var ticks int64
		stack := []int{t.pid}
		for len(stack) > 0 {
			pid := stack[len(stack)-1]
			stack = stack[:len(stack)-1]
			ticks += procs[pid].own + procs[pid].reaped
			stack = append(stack, children[pid]...)
		}
		out[t.name] = time.Duration(ticks) * time.Second / userHZ
	}
	return out, nil
}

// cpuReport prints the CPU each target used between two samples per
// acked send (and per unit of what else is given), and returns the
// figures in ms per send for the summary line.
func cpuReport(targets []cpuTarget, before, after cpuSample, sends int64, window time.Duration) string {
	if len(targets) == 0 {
		return ""
	}
	if sends <= 0 {
		fmt.Println("server CPU: no acked sends")
		return ""
	}
	var total time.Duration
	var fields []string
	fmt.Printf("server CPU over %.1fs (ms per acked send; cores busy):\n", window.Seconds())
	for _, t := range targets {
		d := after[t.name] - before[t.name]
		total += d
		per := float64(d) / float64(time.Millisecond) / float64(sends)
		fmt.Printf("  %-10s %7.3f ms/send  %5.2f cores  (pid %d and its descendants)\n", t.name, per, d.Seconds()/window.Seconds(), t.pid)
		fields = append(fields, fmt.Sprintf("cpu_%s_ms=%.3f", t.name, per))
	}
	per := float64(total) / float64(time.Millisecond) / float64(sends)
	fmt.Printf("  %-10s %7.3f ms/send  %5.2f cores\n", "total", per, total.Seconds()/window.Seconds())
	fields = append(fields, fmt.Sprintf("cpu_total_ms=%.3f", per))
	return strings.Join(fields, " ")
}

// cpuMeter takes the samples around a measured window.
type cpuMeter struct {
	targets []cpuTarget
	before  cpuSample
	start   time.Time
}

func startCPU(targets []cpuTarget) (*cpuMeter, error) {
	s, err := sampleCPU(targets)
	if err != nil {
		return nil, err
	}
	return &cpuMeter{targets: targets, before: s, start: time.Now()}, nil
}

// stop prints the CPU per acked send since start and returns the summary
// fields.
func (m *cpuMeter) stop(sends int64) (string, error) {
	if len(m.targets) == 0 {
		return "", nil
	}
	after, err := sampleCPU(m.targets)
	if err != nil {
		return "", err
	}
	return cpuReport(m.targets, m.before, after, sends, time.Since(m.start)), nil
}
