package push

import "github.com/prometheus/client_golang/prometheus"

var (
	pushesSent = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "parley_push_sent_total",
		Help: "Pushes the push services accepted.",
	})
	pushesFailed = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "parley_push_failed_total",
		Help: "Pushes the push services did not accept (each try).",
	})
	jobsLost = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "parley_push_jobs_lost_total",
		Help: "Events delivered whose push job could not be queued (their pushes are lost).",
	})
	pushesGone = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "parley_push_gone_total",
		Help: "Subscriptions removed because their push service called them gone.",
	})
)

// Collectors returns the package's metrics, for the registry.
func Collectors() []prometheus.Collector {
	return []prometheus.Collector{pushesSent, pushesFailed, pushesGone, jobsLost}
}
