// Package clustertest runs Parley on a real Redis Cluster (three masters,
// three replicas, from scripts/redis-cluster) and breaks it: a master
// killed under sessions being revoked and refresh tokens rotated, under
// live streams; a replica stopped so that it cannot confirm a write. It
// has tests only; `make test-cluster` runs them, with the auth, chat and
// live suites, on the cluster.
package clustertest
