package main

import (
	"fmt"
	"maps"
	"math"
	"slices"
	"strings"
)

// The workloads make bench runs, by label.
var workloads = []struct{ label, what string }{
	{"W1", "16 senders, each in its own private chat, 200-byte messages, each sending as soon as its last send is acked, 20 s; each user on its own HTTP/2 connection (gRPC), as the following workloads"},
	{"W1-big", "W1 on a second server whose store was seeded with 1,000 chats and 100,000 messages first"},
	{"W2-20", "one sender, 20 messages/s for 20 s into a group of 100 members who each hold a live stream"},
	{"W2-100", "W2 at 100 messages/s"},
	{"mixed", "300 users with a stream each: a group of 100 receiving 20 messages/s from all its members, and 100 private chats receiving 20 messages/s in all, 20 s"},
	{"W3-2000", "2,000 idle live streams over 200 users, one HTTP/1.1 connection each"},
	{"W3-10000", "10,000 idle live streams over 1,000 users, one HTTP/1.1 connection each"},
	{"media", "one 50 MB file uploaded to a chat and downloaded by the other member, 3 times"},
}

// A column of a scenario's table: a field, its heading, its precision.
type column struct {
	field, heading string
	prec           int
}

var sendColumns = []column{
	{"sends_per_s", "acked sends/s", 0},
	{"p50_ms", "send p50 ms", 2},
	{"p99_ms", "send p99 ms", 2},
	{"failed", "failed", 0},
	{"mongo_cmds_per_send", "MongoDB commands/send", 2},
	{"cpu_parley_ms", "parley CPU ms/send", 3},
	{"cpu_ferretdb_ms", "FerretDB", 3},
	{"cpu_enginepg_ms", "engine PostgreSQL", 3},
	{"cpu_postgres_ms", "PostgreSQL", 3},
	{"cpu_redis_ms", "Redis", 3},
	{"cpu_total_ms", "all server-side", 3},
}

var deliveryColumns = []column{
	{"acked", "acked", 0},
	{"failed", "failed", 0},
	{"missed", "missed", 0},
	{"duplicated", "duplicated", 0},
	{"resumed", "streams resumed", 0},
	{"p50_ms", "send→receive p50 ms", 2},
	{"p99_ms", "p99 ms", 2},
	{"fanout_p99_ms", "publish→receive p99 ms", 2},
	{"send_p99_ms", "SendMessage p99 ms", 2},
	{"cpu_parley_ms", "parley CPU ms/send", 3},
	{"cpu_total_ms", "all server-side ms/send", 3},
}

var idleColumns = []column{
	{"streams", "streams", 0},
	{"live_kib_per_stream", "server KiB/stream", 2},
	{"redis_kib_per_stream", "Redis KiB/stream", 2},
	{"total_kib_per_stream", "total KiB/stream", 2},
	// Not the process's resident set: the server ran the other
	// workloads first, and holds their freed heap, which the streams
	// reuse, so its growth says nothing per stream (it came out
	// negative). The load tool still records it (rss_kib_per_stream).
}

var mediaColumns = []column{
	{"upload_mb_per_s", "upload MB/s", 0},
	{"download_mb_per_s", "download MB/s", 0},
	{"upload_peak_mib", "server memory above idle, upload MiB", 1},
	{"download_peak_mib", "download MiB", 1},
}

func columnsOf(scenario string) []column {
	switch scenario {
	case "throughput":
		return sendColumns
	case "delivery":
		return deliveryColumns
	case "idle":
		return idleColumns
	case "media":
		return mediaColumns
	}
	return nil
}

// bounds is the hand-written account of what bounds the targets missed
// (bench/bounds.md), given under the targets when any is missed.
func writeReport(b *strings.Builder, recs []record, m meta, calls storeCalls, charts []chart, chartDir string, profiles map[string]string, overhead goBench, bounds string) {
	labels, groups := byLabel(recs)
	p := func(format string, args ...any) { fmt.Fprintf(b, format, args...) }
	p("# Benchmarks\n\n")
	p("Written by `make bench` (`scripts/bench`, then `cmd/parley-benchreport`); do not edit by hand.\n")
	p("Every figure is the median over the runs, with the least and greatest in brackets.\n")
	p("The runs of different workloads are interleaved (one of each, then again), so that\n")
	p("a change in the machine's load falls on all of them alike.\n\n")
	p("## The run\n\n")
	for _, k := range m.keys {
		p("- %s: %s\n", k, m.get(k))
	}
	p("\n")

	p("## Against the targets of issue #14\n\n")
	p("| target | goal | measured | met |\n|---|---|---|---|\n")
	var missed int
	target := func(name, goal string, s stat, prec int, ok bool) {
		met := "no"
		if s.n == 0 {
			met = "not measured"
		} else if ok {
			met = "yes"
		} else {
			missed++
		}
		p("| %s | %s | %s | %s |\n", name, goal, s.format(prec), met)
	}
	// atMost judges a time or size target, and says by how much a missed
	// one is missed.
	atMost := func(name string, limit float64, s stat, prec int) {
		if s.n > 0 && s.med > limit {
			missed++
			p("| %s | ≤ %g | %s | no: %.2f× the goal |\n", name, limit, s.format(prec), s.med/limit)
			return
		}
		target(name, fmt.Sprintf("≤ %g", limit), s, prec, true)
	}
	w1 := groups["W1"]
	atMost("W1: parley CPU per acked send, µs", 300, scale(field(w1, "cpu_parley_ms"), 1000), 0)
	atMost("W1: all server-side CPU per acked send, ms", 1.5, field(w1, "cpu_total_ms"), 3)
	if c, ok := calls["SendMessage, private chat (W1)"]; ok {
		s := stat{n: 1, med: c.MongoTotal, min: c.MongoTotal, max: c.MongoTotal}
		target("W1: document-store commands per send (counted in CI)", "≤ 2", s, 0, c.MongoTotal <= 2)
		if cmds := field(w1, "mongo_cmds_per_send"); cmds.n > 0 {
			target("W1: document-store commands per send under load (sends combined, read from /metrics)", "≤ 2", cmds, 2, cmds.med <= 2)
		}
		s = stat{n: 1, med: c.RedisLocks, min: c.RedisLocks, max: c.RedisLocks}
		target("W1: Redis lock calls per send (counted in CI)", "0", s, 0, c.RedisLocks == 0)
	}
	ratio := overhead.ratios()
	target("SendMessage through the server over the same method called in-process (BenchmarkSendMessage), sends/s", "≥ 0.7", ratio, 2, ratio.med >= 0.7)
	for _, l := range []string{"W2-20", "W2-100"} {
		rs := groups[l]
		bad := stat{}
		if len(rs) > 0 {
			var v []float64
			for _, r := range rs {
				v = append(v, r.Fields["failed"]+r.Fields["missed"]+r.Fields["duplicated"])
			}
			bad = statOf(v)
		}
		target(l+": failed + missed + duplicated", "0", bad, 0, bad.max == 0)
		p99 := field(rs, "p99_ms")
		if l == "W2-100" {
			target(l+": delivery p99, ms", "reported", p99, 2, true)
		} else {
			atMost(l+": delivery p99, ms", 10, p99, 2)
		}
	}
	for _, l := range []string{"W3-2000", "W3-10000"} {
		s := field(groups[l], "total_kib_per_stream")
		atMost(l+": server + Redis memory per idle stream, kB", 30, scale(s, 1.024), 1) // KiB to kB
	}
	atMost("W1 on 1,000 chats and 100k messages: server-side CPU per send over a fresh store's", 1.2,
		ratioStat(groups["W1-big"], groups["W1"], "cpu_total_ms"), 2)
	atMost("W1 on 1,000 chats and 100k messages: a fresh store's acked sends/s over the big store's", 1.2,
		ratioStat(groups["W1"], groups["W1-big"], "sends_per_s"), 2)
	p("\nThe store calls per send come from `bench/store-calls.json`, which `make test`\n")
	p("checks on every run (`TestSendMessage_StoreCalls`); `bench/README.md` lists them.\n\n")
	if missed > 0 {
		p("### What bounds the targets missed\n\n")
		if bounds == "" {
			p("No account of the targets missed was given (`-bounds`).\n\n")
		} else {
			p("%s\n\n", strings.TrimSpace(bounds))
		}
	}

	if len(overhead.rpc) > 0 {
		p("## The server's own cost\n\n")
		p("`BenchmarkSendMessage` (`server/chat/bench_test.go`) sends into one group from 16\n")
		p("senders at a time, through a server over HTTP (Connect, authentication,\n")
		p("validation) and by calling the same service method in-process on the same\n")
		p("stores, one after the other in each run.\n\n")
		p("| | sends/s |\n|---|---|\n")
		p("| through the server | %s |\n", statOf(overhead.rpc).format(0))
		p("| in-process | %s |\n", statOf(overhead.direct).format(0))
		p("| ratio, run by run | %s |\n\n", overhead.ratios().format(2))
	}
	p("## Store calls per send\n\n")
	p("| scenario | MongoDB commands | Redis round trips | Redis commands | Redis lock calls | SQL queries |\n|---|---|---|---|---|---|\n")
	for _, name := range slices.Sorted(maps.Keys(calls)) {
		c := calls[name]
		p("| %s | %g | %g | %g | %g | %g |\n", name, c.MongoTotal, c.RedisRoundTrips, c.RedisTotal, c.RedisLocks, c.SQL)
	}
	p("\n")

	p("## Workloads\n\n")
	for _, w := range workloads {
		rs := groups[w.label]
		if len(rs) == 0 {
			continue
		}
		p("### %s\n\n%s; %d runs.\n\n", w.label, w.what, len(rs))
		cols := columnsOf(rs[0].Scenario)
		var shown []column
		for _, c := range cols {
			if field(rs, c.field).n > 0 {
				shown = append(shown, c)
			}
		}
		p("|")
		for _, c := range shown {
			p(" %s |", c.heading)
		}
		p("\n|")
		for range shown {
			p("---|")
		}
		p("\n|")
		for _, c := range shown {
			p(" %s |", field(rs, c.field).format(c.prec))
		}
		p("\n\n")
		if lat := latencyLine(rs); lat != "" {
			p("%s\n\n", lat)
		}
		for _, c := range charts {
			if c.label == w.label {
				p("![%s](%s/%s)\n\n", c.title, chartDir, c.file)
			}
		}
	}
	for _, l := range labels {
		if !known(l) {
			p("### %s\n\n%d records (no description).\n\n", l, len(groups[l]))
		}
	}
	for _, c := range charts {
		if c.label == "" {
			p("![%s](%s/%s)\n\n", c.title, chartDir, c.file)
		}
	}

	if len(profiles) > 0 {
		p("## Where the CPU goes\n\n")
		p("CPU profiles of the parley process, taken through its admin listener\n")
		p("(`/debug/pprof/profile`) over the measured window of the first run of each\n")
		p("workload named: the top entries by the time spent in the function itself\n")
		p("(`go tool pprof -top`). What they show, and what was done about it, is in\n")
		if missed > 0 {
			p("\"What bounds the targets missed\" above and, measured, in `bench/README.md`.\n\n")
		} else {
			p("`bench/README.md`.\n\n")
		}
		for _, l := range slices.Sorted(maps.Keys(profiles)) {
			p("### %s\n\n```\n%s```\n\n", l, profiles[l])
		}
	}
}

func known(label string) bool {
	for _, w := range workloads {
		if w.label == label {
			return true
		}
	}
	return false
}

func scale(s stat, f float64) stat {
	return stat{n: s.n, med: s.med * f, min: s.min * f, max: s.max * f}
}

// ratioStat pairs the runs of a and b in order (they are interleaved) and
// gives the ratio of a field, a over b.
func ratioStat(a, b []record, name string) stat {
	var v []float64
	for i := range min(len(a), len(b)) {
		x, y := a[i].Fields[name], b[i].Fields[name]
		if y > 0 {
			v = append(v, x/y)
		}
	}
	return statOf(v)
}

// latencyLine gives the percentiles of all runs' samples pooled.
func latencyLine(rs []record) string {
	var all []float64
	for _, r := range rs {
		all = append(all, r.LatencyMs...)
	}
	if len(all) == 0 {
		return ""
	}
	slices.Sort(all)
	q := func(x float64) string {
		v := percentile(all, x)
		if math.IsNaN(v) {
			return "–"
		}
		return fmt.Sprintf("%.2f", v)
	}
	return fmt.Sprintf("Latency over all runs' %d samples, ms: p50 %s, p90 %s, p99 %s, p99.9 %s, max %s.",
		len(all), q(0.5), q(0.9), q(0.99), q(0.999), q(1))
}
