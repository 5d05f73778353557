// Command parley-benchreport turns what `make bench` gathered into
// BENCHMARKS.md and its charts.
//
// It reads the load tool's records (parley-load -json, one JSON object a
// line, each labelled with its workload by -label), a file of facts about
// the run (key: value lines: the machine, the commit, the load average),
// the store calls per send that CI checks (bench/store-calls.json), and
// the text of the CPU profiles taken during the run; it writes the
// report, with each figure's median and spread over the runs, the
// issue's targets beside them, and PNG charts drawn with gonum/plot:
// latency distributions, throughput over time, memory per stream against
// the stream count.
//
//	go run ./cmd/parley-benchreport -in out/results.jsonl -meta out/meta.txt \
//	    -profiles out/profiles -out BENCHMARKS.md -charts bench/charts
package main

import (
	"bufio"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"github.com/parley-chat/parley/cmd/internal/loadrecord"
)

func main() {
	if err := run(os.Args[1:]); err != nil {
		if !errors.Is(err, flag.ErrHelp) {
			fmt.Fprintln(os.Stderr, "parley-benchreport:", err)
		}
		os.Exit(1)
	}
}

type (
	record   = loadrecord.Record
	memPoint = loadrecord.MemPoint
)

// meta is the run's facts, in the order the file gives them.
type meta struct {
	keys   []string
	values map[string]string
}

func (m meta) get(k string) string { return m.values[k] }

type options struct {
	in, metaFile, storeCalls, profiles, goBench, bounds, out, charts string
}

func run(args []string) error {
	var o options
	fs := flag.NewFlagSet("parley-benchreport", flag.ContinueOnError)
	fs.StringVar(&o.in, "in", "", "the load tool's records (`file`, JSON lines)")
	fs.StringVar(&o.metaFile, "meta", "", "facts about the run (`file` of key: value lines)")
	fs.StringVar(&o.storeCalls, "store-calls", "bench/store-calls.json", "store calls per send (`file`)")
	fs.StringVar(&o.profiles, "profiles", "", "`directory` of CPU profiles as text (pprof -top), one per workload")
	fs.StringVar(&o.goBench, "gobench", "", "the output of BenchmarkSendMessage (server/chat), run with -count (`file`)")
	fs.StringVar(&o.bounds, "bounds", "bench/bounds.md", "what bounds the targets missed (`file` of Markdown, given under the targets when one is missed; none if it does not exist)")
	fs.StringVar(&o.out, "out", "BENCHMARKS.md", "the report (`file`)")
	fs.StringVar(&o.charts, "charts", "bench/charts", "where the charts go (`directory`)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if o.in == "" || fs.NArg() > 0 {
		return errors.New("usage: parley-benchreport -in results.jsonl [-meta meta.txt] [-profiles dir] [-out BENCHMARKS.md] [-charts dir]")
	}
	recs, err := readRecords(o.in)
	if err != nil {
		return err
	}
	m, err := readMeta(o.metaFile)
	if err != nil {
		return err
	}
	calls, err := readStoreCalls(o.storeCalls)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(o.charts, 0o755); err != nil {
		return err
	}
	charts, err := drawCharts(recs, o.charts)
	if err != nil {
		return err
	}
	profiles, err := readProfiles(o.profiles)
	if err != nil {
		return err
	}
	overhead, err := readGoBench(o.goBench)
	if err != nil {
		return err
	}
	bounds, err := os.ReadFile(o.bounds)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	rel, err := filepath.Rel(filepath.Dir(o.out), o.charts)
	if err != nil {
		rel = o.charts
	}
	var b strings.Builder
	writeReport(&b, recs, m, calls, charts, filepath.ToSlash(rel), profiles, overhead, string(bounds))
	return os.WriteFile(o.out, []byte(b.String()), 0o644)
}

func readRecords(path string) ([]record, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out []record
	dec := json.NewDecoder(bufio.NewReader(f))
	for {
		var r record
		if err := dec.Decode(&r); err == io.EOF {
			break
		} else if err != nil {
			return nil, fmt.Errorf("%s: %w", path, err)
		}
		out = append(out, r)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("%s: no records", path)
	}
	return out, nil
}

func readMeta(path string) (meta, error) {
	m := meta{values: map[string]string{}}
	if path == "" {
		return m, nil
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return m, err
	}
	for line := range strings.Lines(string(b)) {
		k, v, ok := strings.Cut(strings.TrimSpace(line), ":")
		if !ok {
			continue
		}
		k, v = strings.TrimSpace(k), strings.TrimSpace(v)
		if _, seen := m.values[k]; !seen {
			m.keys = append(m.keys, k)
		}
		m.values[k] = v
	}
	return m, nil
}

// storeCalls is bench/store-calls.json: per scenario, the calls of one send.
type storeCalls map[string]struct {
	Mongo           map[string]float64 `json:"mongo"`
	MongoTotal      float64            `json:"mongoTotal"`
	RedisRoundTrips float64            `json:"redisRoundTrips"`
	RedisTotal      float64            `json:"redisTotal"`
	RedisLocks      float64            `json:"redisLocks"`
	SQL             float64            `json:"sql"`
}

func readStoreCalls(path string) (storeCalls, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var c storeCalls
	if err := json.Unmarshal(b, &c); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return c, nil
}

// goBench is what BenchmarkSendMessage measured: sends a second through
// the server and in-process, run by run.
type goBench struct {
	rpc, direct []float64
}

var goBenchLine = regexp.MustCompile(`^BenchmarkSendMessage/(direct|rpc)(?:-\d+)?\s.*?\s([0-9.]+) sends/s`)

func readGoBench(path string) (goBench, error) {
	var g goBench
	if path == "" {
		return g, nil
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return g, err
	}
	for line := range strings.Lines(string(b)) {
		m := goBenchLine.FindStringSubmatch(line)
		if m == nil {
			continue
		}
		v, err := strconv.ParseFloat(m[2], 64)
		if err != nil {
			return g, fmt.Errorf("%s: %w", path, err)
		}
		if m[1] == "rpc" {
			g.rpc = append(g.rpc, v)
		} else {
			g.direct = append(g.direct, v)
		}
	}
	return g, nil
}

// ratios pairs the runs in order (each run measures both) and gives
// through the server over in-process.
func (g goBench) ratios() stat {
	var v []float64
	for i := range min(len(g.rpc), len(g.direct)) {
		if g.direct[i] > 0 {
			v = append(v, g.rpc[i]/g.direct[i])
		}
	}
	return statOf(v)
}

// readProfiles reads <dir>/<label>.txt, by label.
func readProfiles(dir string) (map[string]string, error) {
	out := map[string]string{}
	if dir == "" {
		return out, nil
	}
	entries, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) {
		return out, nil
	} else if err != nil {
		return nil, err
	}
	for _, e := range entries {
		label, ok := strings.CutSuffix(e.Name(), ".txt")
		if !ok {
			continue
		}
		b, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			return nil, err
		}
		out[label] = string(b)
	}
	return out, nil
}

// byLabel groups records by label, in the order labels first appear.
func byLabel(recs []record) ([]string, map[string][]record) {
	var labels []string
	groups := map[string][]record{}
	for _, r := range recs {
		if _, ok := groups[r.Label]; !ok {
			labels = append(labels, r.Label)
		}
		groups[r.Label] = append(groups[r.Label], r)
	}
	return labels, groups
}

// stat is a figure over runs: its median, least and greatest.
type stat struct {
	n             int
	med, min, max float64
}

func statOf(v []float64) stat {
	if len(v) == 0 {
		return stat{}
	}
	s := slices.Sorted(slices.Values(v))
	med := s[len(s)/2]
	if len(s)%2 == 0 {
		med = (s[len(s)/2-1] + s[len(s)/2]) / 2
	}
	return stat{n: len(s), med: med, min: s[0], max: s[len(s)-1]}
}

// field collects one field over a label's runs.
func field(rs []record, name string) stat {
	var v []float64
	for _, r := range rs {
		if x, ok := r.Fields[name]; ok {
			v = append(v, x)
		}
	}
	return statOf(v)
}

// format prints a figure with prec digits after the point, and its spread
// when there is one.
func (s stat) format(prec int) string {
	if s.n == 0 {
		return "–"
	}
	f := func(x float64) string { return fmt.Sprintf("%.*f", prec, x) }
	if s.n == 1 || s.min == s.max {
		return f(s.med)
	}
	return fmt.Sprintf("%s (%s–%s)", f(s.med), f(s.min), f(s.max))
}

// percentile is the q-quantile of sorted samples.
func percentile(sorted []float64, q float64) float64 {
	if len(sorted) == 0 {
		return math.NaN()
	}
	return sorted[min(len(sorted)-1, max(0, int(math.Ceil(q*float64(len(sorted))))-1))]
}

// perStream is what each stream beyond the first point adds, in KiB.
func perStream(ps []memPoint, v func(memPoint) int64) float64 {
	if len(ps) < 2 {
		return math.NaN()
	}
	a, b := ps[0], ps[len(ps)-1]
	return float64(v(b)-v(a)) / float64(b.Streams-a.Streams) / 1024
}
