package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestStatOf(t *testing.T) {
	for _, c := range []struct {
		in   []float64
		want stat
	}{
		{nil, stat{}},
		{[]float64{3}, stat{1, 3, 3, 3}},
		{[]float64{5, 1, 3}, stat{3, 3, 1, 5}},
		{[]float64{4, 1, 2, 8}, stat{4, 3, 1, 8}},
	} {
		if got := statOf(c.in); got != c.want {
			t.Errorf("statOf(%v) = %+v, want %+v", c.in, got, c.want)
		}
	}
	if got := (stat{3, 2.5, 1, 4}).format(1); got != "2.5 (1.0–4.0)" {
		t.Errorf("format = %q", got)
	}
}

// The report is written from records, with the targets judged from the
// medians and a chart per latency series.
func TestReport(t *testing.T) {
	dir := t.TempDir()
	in := filepath.Join(dir, "results.jsonl")
	var lines []string
	for i, cpu := range []string{"0.25", "0.4", "0.2"} {
		at := time.Date(2026, 12, 5, 10, i, 0, 0, time.UTC).Format(time.RFC3339)
		lines = append(lines,
			`{"scenario":"throughput","phase":"throughput","label":"W1","at":"`+at+`","fields":{"sends_per_s":500,"cpu_parley_ms":`+cpu+`,"cpu_total_ms":2},"latencyMs":[1,2,3],"perSecond":[400,500]}`,
			`{"scenario":"idle","phase":"idle","label":"W3-2000","at":"`+at+`","fields":{"total_kib_per_stream":20},"memory":[{"streams":200,"live":1000000},{"streams":2000,"live":41000000}]}`)
	}
	if err := os.WriteFile(in, []byte(strings.Join(lines, "\n")+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	calls := filepath.Join(dir, "calls.json")
	os.WriteFile(calls, []byte(`{"SendMessage, private chat (W1)":{"mongoTotal":2,"redisLocks":0}}`), 0o644)
	bounds := filepath.Join(dir, "bounds.md")
	os.WriteFile(bounds, []byte("What bounds W1.\n"), 0o644)
	out := filepath.Join(dir, "BENCHMARKS.md")
	if err := run([]string{"-in", in, "-store-calls", calls, "-bounds", bounds, "-out", out, "-charts", filepath.Join(dir, "charts")}); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	report := string(b)
	for _, want := range []string{
		"| W1: parley CPU per acked send, µs | ≤ 300 | 250 (200–400) | yes |",
		"| W1: all server-side CPU per acked send, ms | ≤ 1.5 | 2.000 | no: 1.33× the goal |",
		"### What bounds the targets missed\n\nWhat bounds W1.\n",
		"| W1: document-store commands per send (counted in CI) | ≤ 2 | 2 | yes |",
		"| W3-2000: server + Redis memory per idle stream, kB | ≤ 30 | 20.5 | yes |",
		"| W3-10000: server + Redis memory per idle stream, kB | ≤ 30 | – | not measured |",
		"![W1: latency distribution](charts/latency-W1.png)",
		"![Memory per idle stream against the number of streams](charts/memory-per-stream.png)",
	} {
		if !strings.Contains(report, want) {
			t.Errorf("the report lacks %q", want)
		}
	}
	for _, f := range []string{"latency-W1.png", "throughput-W1.png", "memory-per-stream.png"} {
		if st, err := os.Stat(filepath.Join(dir, "charts", f)); err != nil || st.Size() == 0 {
			t.Errorf("chart %s: %v", f, err)
		}
	}
}
