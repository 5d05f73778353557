package live

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"

	parleyv1 "github.com/parley-chat/parley/gen/parley/v1"
)

// The package's metrics, process-wide as a Prometheus client's counters
// usually are; each server's registry collects them (Collectors). The
// number of open streams is per hub (Hub.Streams).
var (
	eventsPublished = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "parley_live_events_published_total",
		Help: "Events logged and published, counted once for each user they are for.",
	})
	eventsDelivered = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "parley_live_events_delivered_total",
		Help: "Events written to live streams, live or replayed from the log (heartbeats and ready events not counted).",
	})
	eventsDropped = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "parley_live_events_dropped_total",
		Help: "Events not queued for a stream because its queue was full; the stream then ends (RESOURCE_EXHAUSTED) and its client resumes from the log.",
	})
	streamsCut = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "parley_live_streams_cut_total",
		Help: "Streams ended because their client took nothing for the write timeout (-live-write-timeout); the client resumes from its cursor.",
	})
	fanoutLag = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:    "parley_live_fanout_lag_seconds",
		Help:    "Time from an event's publication (after it was stored) to its write to a live stream, for events delivered live.",
		Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10},
	})
)

// Collectors returns the package's metrics.
func Collectors() []prometheus.Collector {
	return []prometheus.Collector{eventsPublished, eventsDelivered, eventsDropped, streamsCut, fanoutLag}
}

// delivered counts an event written to a stream as it happened.
func delivered(ev *parleyv1.Event) {
	eventsDelivered.Inc()
	if ev.GetTime() != nil {
		fanoutLag.Observe(max(time.Since(ev.GetTime().AsTime()), 0).Seconds())
	}
}
