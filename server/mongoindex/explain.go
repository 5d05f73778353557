package mongoindex

import (
	"encoding/json"
	"fmt"
	"strings"

	"go.mongodb.org/mongo-driver/v2/bson"
)

// Unindexed says why a query plan (explain's answer: MongoDB's, or
// DocumentDB's PostgreSQL plan as FerretDB 2 returns it) reads a
// collection without an index, or "" when every scan in it uses one.
// DocumentDB keeps a collection in one table whose primary key starts
// with a shard key that every document of the collection shares, so an
// index scan on that key alone reads the whole collection: it counts as
// no index. The tests use it to check that the hot queries have indexes.
func Unindexed(raw bson.Raw) (string, error) {
	if strings.Contains(raw.String(), "COLLSCAN") {
		return "MongoDB scans the collection (COLLSCAN)", nil
	}
	js, err := bson.MarshalExtJSON(raw, false, false)
	if err != nil {
		return "", fmt.Errorf("decode plan: %w", err)
	}
	var plan any
	if err := json.Unmarshal(js, &plan); err != nil {
		return "", fmt.Errorf("decode plan: %w", err)
	}
	var scans []map[string]any
	var walk func(v any)
	walk = func(v any) {
		switch v := v.(type) {
		case map[string]any:
			if typ, _ := v["Node Type"].(string); strings.HasSuffix(typ, "Scan") && typ != "Bitmap Heap Scan" && typ != "Subquery Scan" {
				scans = append(scans, v)
			}
			for _, x := range v {
				walk(x)
			}
		case []any:
			for _, x := range v {
				walk(x)
			}
		}
	}
	walk(plan)
	if len(scans) == 0 {
		if strings.Contains(raw.String(), "IXSCAN") || strings.Contains(raw.String(), "IDHACK") || strings.Contains(raw.String(), "EXPRESS") {
			return "", nil // MongoDB
		}
		return "no scan found in the plan", nil
	}
	for _, sc := range scans {
		typ := sc["Node Type"].(string)
		cond, _ := sc["Index Cond"].(string)
		switch {
		case typ == "Seq Scan":
			return "PostgreSQL scans the table (Seq Scan)", nil
		case !strings.Contains(typ, "Index"):
			return "a scan without an index: " + typ, nil
		case !strings.Contains(cond, "document") && !strings.Contains(cond, "object_id"):
			return fmt.Sprintf("%s on %v by the shard key alone (the whole collection): %s", typ, sc["Index Name"], cond), nil
		}
	}
	return "", nil
}
