package main

import (
	"context"
	"fmt"
	"net/http"
	"strings"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// storeCalls reads, from the server's /metrics on its admin listener, how
// many calls it has made to each store (parley_store_call_duration_seconds'
// counts by the store label: mongodb, redis, postgresql).
func storeCalls(ctx context.Context, adminURL string) (map[string]float64, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, strings.TrimSuffix(adminURL, "/")+"/metrics", nil)
	if err != nil {
		return nil, err
	}
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, fmt.Errorf("store calls: %w", err)
	}
	defer res.Body.Close()
	if res.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("store calls: /metrics answered %s", res.Status)
	}
	parser := expfmt.NewTextParser(model.UTF8Validation)
	families, err := parser.TextToMetricFamilies(res.Body)
	if err != nil {
		return nil, fmt.Errorf("store calls: %w", err)
	}
	out := map[string]float64{}
	f := families["parley_store_call_duration_seconds"]
	if f == nil {
		return out, nil
	}
	for _, m := range f.GetMetric() {
		for _, l := range m.GetLabel() {
			if l.GetName() == "store" {
				out[l.GetValue()] += float64(m.GetHistogram().GetSampleCount())
			}
		}
	}
	return out, nil
}

// storeCallFields are the calls made to each store between two readings
// of storeCalls, per acked send: everything the server did meanwhile,
// background work included (heartbeats, presence, health pings).
func storeCallFields(before, after map[string]float64, acked int64) []field {
	if before == nil || after == nil || acked == 0 {
		return nil
	}
	per := func(store string) float64 { return (after[store] - before[store]) / float64(acked) }
	return []field{
		{"mongo_cmds_per_send", per("mongodb"), 2},
		{"redis_calls_per_send", per("redis"), 2},
		{"sql_per_send", per("postgres"), 2},
	}
}
