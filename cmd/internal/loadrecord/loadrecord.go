// Package loadrecord is the record that cmd/parley-load writes for each
// measured phase (-json, one JSON object a line) and that
// cmd/parley-benchreport reads.
package loadrecord

import "time"

// Record is what one measured phase saw.
type Record struct {
	Scenario string    `json:"scenario"`
	Phase    string    `json:"phase"`
	Label    string    `json:"label,omitempty"`
	At       time.Time `json:"at"`
	// Fields are the figures of the RESULT line, by name.
	Fields map[string]float64 `json:"fields"`
	// LatencyMs are the phase's latency samples in milliseconds: first
	// attempt to ack (throughput), start of the send to receipt
	// (delivery).
	LatencyMs []float64 `json:"latencyMs,omitempty"`
	// PerSecond counts what completed in each second of the window:
	// acked sends (throughput), deliveries (delivery).
	PerSecond []int `json:"perSecond,omitempty"`
	// Memory is the server's memory at each stream count (idle).
	Memory []MemPoint `json:"memory,omitempty"`
}

// MemPoint is the server's memory with so many streams open, read after
// a garbage collection.
type MemPoint struct {
	Streams int `json:"streams"`
	// Live is the server's live heap and goroutine stacks; Redis is
	// Redis's used_memory (0 when not read).
	Live  int64 `json:"live"`
	Redis int64 `json:"redis,omitempty"`
}
