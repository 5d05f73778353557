package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/parley-chat/parley/cmd/internal/loadrecord"
)

// record is what -json writes for a phase: one JSON object a line,
// appended, so that a series of runs (make bench) gathers in one file for
// the report (cmd/parley-benchreport).
type record = loadrecord.Record

type memPoint = loadrecord.MemPoint

// field is one figure of a RESULT line.
type field struct {
	name  string
	value float64
	prec  int // digits after the point in the RESULT line
}

// result prints a phase's RESULT line (key=value fields, for scripts)
// and, with -json, appends its record.
func result(cfg config, rec record, fields ...field) error {
	var b strings.Builder
	b.WriteString("RESULT phase=" + rec.Phase)
	rec.Fields = make(map[string]float64, len(fields))
	for _, f := range fields {
		fmt.Fprintf(&b, " %s=%s", f.name, strconv.FormatFloat(f.value, 'f', f.prec, 64))
		rec.Fields[f.name] = f.value
	}
	fmt.Println(b.String())
	if cfg.jsonOut == "" {
		return nil
	}
	rec.Label, rec.At = cfg.label, time.Now().UTC()
	line, err := json.Marshal(rec)
	if err != nil {
		return err
	}
	f, err := os.OpenFile(cfg.jsonOut, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
	if err != nil {
		return fmt.Errorf("-json: %w", err)
	}
	if _, err := f.Write(append(line, '\n')); err != nil {
		f.Close()
		return fmt.Errorf("-json: %w", err)
	}
	return f.Close()
}

// startProfile takes a CPU profile of the server through its admin
// listener for d, from now, when -profile is set; wait writes it to the
// -profile file.
func startProfile(ctx context.Context, cfg config, d time.Duration) (wait func() error) {
	if cfg.profile == "" {
		return func() error { return nil }
	}
	done := make(chan error, 1)
	go func() {
		done <- func() error {
			secs := max(1, int(d.Round(time.Second)/time.Second))
			url := fmt.Sprintf("%s/debug/pprof/profile?seconds=%d", strings.TrimSuffix(cfg.adminURL, "/"), secs)
			req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
			if err != nil {
				return err
			}
			res, err := http.DefaultClient.Do(req)
			if err != nil {
				return fmt.Errorf("profile: %w", err)
			}
			defer res.Body.Close()
			if res.StatusCode != http.StatusOK {
				return fmt.Errorf("profile: %s", res.Status)
			}
			f, err := os.Create(cfg.profile)
			if err != nil {
				return fmt.Errorf("profile: %w", err)
			}
			if _, err := io.Copy(f, res.Body); err != nil {
				f.Close()
				return fmt.Errorf("profile: %w", err)
			}
			return f.Close()
		}()
	}()
	return func() error { return <-done }
}

// millis turns durations into milliseconds.
func millis(d []time.Duration) []float64 {
	out := make([]float64, len(d))
	for i, v := range d {
		out[i] = float64(v) / float64(time.Millisecond)
	}
	return out
}

// perSecond counts the events at each offset into the window, by second.
func perSecond(offsets []time.Duration, window time.Duration) []int {
	n := int(window / time.Second)
	if window%time.Second != 0 {
		n++
	}
	out := make([]int, n)
	for _, o := range offsets {
		if i := int(o / time.Second); i >= 0 && i < n {
			out[i]++
		}
	}
	return out
}

// cpuFields are the CPU figures of a cpuReport's summary, as fields.
func cpuFields(summary string) []field {
	var out []field
	for _, kv := range strings.Fields(summary) {
		k, v, ok := strings.Cut(kv, "=")
		if n, err := strconv.ParseFloat(v, 64); ok && err == nil {
			out = append(out, field{k, n, 3})
		}
	}
	return out
}
