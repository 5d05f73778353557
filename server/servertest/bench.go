package servertest

import (
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// Concurrently resets b's timer, makes b.N calls from n goroutines, and
// returns each call's latency. A call gets the number of its goroutine,
// from 0 to n-1; an error fails the benchmark and stops that goroutine.
func Concurrently(b *testing.B, n int, call func(worker int) error) []time.Duration {
	b.Helper()
	latencies := make([]time.Duration, b.N)
	var next atomic.Int64
	var wg sync.WaitGroup
	b.ResetTimer()
	for w := range n {
		wg.Go(func() {
			for {
				i := next.Add(1) - 1
				if i >= int64(b.N) {
					return
				}
				start := time.Now()
				if err := call(w); err != nil {
					b.Error(err)
					return
				}
				latencies[i] = time.Since(start)
			}
		})
	}
	wg.Wait()
	return latencies
}

// Percentile returns the q-quantile (0 ≤ q ≤ 1) of the latencies, which it
// leaves in their order.
func Percentile(latencies []time.Duration, q float64) time.Duration {
	s := slices.Clone(latencies)
	slices.Sort(s)
	return s[int(q*float64(len(s)-1))]
}
