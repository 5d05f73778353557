package main

import (
	"fmt"
	"math"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/plotutil"
	"gonum.org/v1/plot/vg"
)

// chart is a drawn PNG: which workload it belongs to ("" for charts that
// span several), its title and its file name.
type chart struct {
	label, title, file string
}

// drawCharts draws every chart the records allow into dir.
func drawCharts(recs []record, dir string) ([]chart, error) {
	labels, groups := byLabel(recs)
	var out []chart
	for _, l := range labels {
		rs := groups[l]
		if len(rs[0].LatencyMs) > 0 {
			c := chart{l, l + ": latency distribution", "latency-" + fileName(l) + ".png"}
			xlabel := "send to ack, ms (log scale)"
			if rs[0].Scenario == "delivery" {
				xlabel = "start of the send to receipt by each member, ms (log scale)"
			}
			if err := latencyChart(rs, c.title, xlabel, filepath.Join(dir, c.file)); err != nil {
				return nil, err
			}
			out = append(out, c)
		}
		if len(rs[0].PerSecond) > 0 {
			c := chart{l, l + ": throughput over time", "throughput-" + fileName(l) + ".png"}
			ylabel := "acked sends per second"
			if rs[0].Scenario == "delivery" {
				ylabel = "deliveries per second"
			}
			if err := timeChart(rs, c.title, ylabel, filepath.Join(dir, c.file)); err != nil {
				return nil, err
			}
			out = append(out, c)
		}
	}
	var idle []record
	for _, l := range labels {
		if groups[l][0].Scenario == "idle" {
			idle = append(idle, groups[l]...)
		}
	}
	if len(idle) > 0 {
		c := chart{"", "Memory per idle stream against the number of streams", "memory-per-stream.png"}
		if err := memoryChart(idle, c.title, filepath.Join(dir, c.file)); err != nil {
			return nil, err
		}
		out = append(out, c)
	}
	return out, nil
}

func fileName(label string) string {
	return strings.Map(func(r rune) rune {
		if r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' {
			return r
		}
		return '_'
	}, label)
}

// runName names a run in a legend.
func runName(i int, r record) string {
	return fmt.Sprintf("run %d (%s)", i+1, r.At.Format("15:04"))
}

func newPlot(title, x, y string) *plot.Plot {
	p := plot.New()
	p.Title.Text = title
	p.X.Label.Text = x
	p.Y.Label.Text = y
	p.Add(plotter.NewGrid())
	p.Legend.Top = true
	p.Legend.Left = true
	return p
}

func addLine(p *plot.Plot, i int, name string, xys plotter.XYs) error {
	l, err := plotter.NewLine(xys)
	if err != nil {
		return err
	}
	l.Color = plotutil.Color(i)
	l.Dashes = plotutil.Dashes(i / len(plotutil.DefaultColors))
	l.Width = vg.Points(1.5)
	p.Add(l)
	p.Legend.Add(name, l)
	return nil
}

// latencyChart draws each run's latency as a cumulative distribution:
// the share of samples at or under each latency.
func latencyChart(rs []record, title, xlabel, file string) error {
	p := newPlot(title, xlabel, "share of samples at or under, %")
	p.X.Scale = plot.LogScale{}
	p.X.Tick.Marker = logTicks{}
	p.Legend.Left, p.Legend.Top = true, true
	for i, r := range rs {
		s := slices.Clone(r.LatencyMs)
		slices.Sort(s)
		// At most about 500 points a line: the distribution's shape, not
		// every sample.
		step := max(1, len(s)/500)
		var xys plotter.XYs
		for j := 0; j < len(s); j += step {
			xys = append(xys, plotter.XY{X: max(s[j], 0.01), Y: 100 * float64(j+1) / float64(len(s))})
		}
		xys = append(xys, plotter.XY{X: max(s[len(s)-1], 0.01), Y: 100})
		if err := addLine(p, i, runName(i, r), xys); err != nil {
			return err
		}
	}
	p.Y.Min, p.Y.Max = 0, 100
	return p.Save(16*vg.Centimeter, 10*vg.Centimeter, file)
}

// timeChart draws each run's completions per second.
func timeChart(rs []record, title, ylabel, file string) error {
	p := newPlot(title, "seconds into the run", ylabel)
	p.Legend.Top, p.Legend.Left = false, false
	for i, r := range rs {
		var xys plotter.XYs
		for s, n := range r.PerSecond {
			xys = append(xys, plotter.XY{X: float64(s) + 0.5, Y: float64(n)})
		}
		if err := addLine(p, i, runName(i, r), xys); err != nil {
			return err
		}
	}
	p.Y.Min = 0
	return p.Save(16*vg.Centimeter, 10*vg.Centimeter, file)
}

// memoryChart draws, for each idle run, the server's and Redis's memory
// per stream beyond the first reading, at each stream count read.
func memoryChart(rs []record, title, file string) error {
	p := newPlot(title, "open streams", "KiB per stream (beyond one per user)")
	p.Legend.Top, p.Legend.Left = false, false
	line := 0
	for _, r := range rs {
		if len(r.Memory) < 2 {
			continue
		}
		base := r.Memory[0]
		var server, total plotter.XYs
		for _, m := range r.Memory[1:] {
			n := float64(m.Streams - base.Streams)
			server = append(server, plotter.XY{X: float64(m.Streams), Y: float64(m.Live-base.Live) / n / 1024})
			total = append(total, plotter.XY{X: float64(m.Streams), Y: float64(m.Live-base.Live+m.Redis-base.Redis) / n / 1024})
		}
		name := fmt.Sprintf("%s %s", r.Label, r.At.Format("15:04"))
		if err := addLine(p, line, name+" server + Redis", total); err != nil {
			return err
		}
		line++
		if err := addLine(p, line, name+" server", server); err != nil {
			return err
		}
		line++
	}
	p.Y.Min = 0
	return p.Save(18*vg.Centimeter, 11*vg.Centimeter, file)
}

// logTicks marks 1, 2 and 5 times each power of ten, labelled: a latency
// range often spans less than a decade, which plot.LogTicks leaves
// without a label.
type logTicks struct{}

func (logTicks) Ticks(lo, hi float64) []plot.Tick {
	var out []plot.Tick
	for e := math.Floor(math.Log10(lo)); math.Pow(10, e) <= hi; e++ {
		for _, m := range []float64{1, 2, 5} {
			v := m * math.Pow(10, e)
			if v < lo || v > hi {
				continue
			}
			out = append(out, plot.Tick{Value: v, Label: strconv.FormatFloat(v, 'g', -1, 64)})
		}
	}
	return out
}
