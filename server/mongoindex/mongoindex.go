// Package mongoindex creates a collection's indexes at start-up, in a way
// that works on MongoDB and on FerretDB alike, from every instance at once.
package mongoindex

import (
	"context"
	"slices"

	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"
)

// Ensure creates the indexes whose names the collection does
// not have yet. (FerretDB 1.24 fails on a createIndexes of existing ones,
// which MongoDB accepts as a no-op.) Instances starting together may race
// to create one; whatever they leave is checked by listing again.
func Ensure(ctx context.Context, c *mongo.Collection, models []mongo.IndexModel) error {
	missing := func() ([]mongo.IndexModel, error) {
		specs, err := c.Indexes().ListSpecifications(ctx)
		if err != nil {
			return nil, err
		}
		var out []mongo.IndexModel
		for _, m := range models {
			if !has(specs, *indexName(m)) {
				out = append(out, m)
			}
		}
		return out, nil
	}
	todo, err := missing()
	if err != nil || len(todo) == 0 {
		return err
	}
	if _, err := c.Indexes().CreateMany(ctx, todo); err != nil {
		if left, lerr := missing(); lerr != nil || len(left) > 0 {
			return err
		}
	}
	return nil
}

// has reports whether specs include an index named name.
func has(specs []mongo.IndexSpecification, name string) bool {
	return slices.ContainsFunc(specs, func(s mongo.IndexSpecification) bool { return s.Name == name })
}

// indexName returns the name an index model sets.
func indexName(m mongo.IndexModel) *string {
	var o options.IndexOptions
	for _, set := range m.Options.List() {
		_ = set(&o)
	}
	return o.Name
}

// Drop drops those of the named indexes that the collection has.
func Drop(ctx context.Context, c *mongo.Collection, names []string) error {
	specs, err := c.Indexes().ListSpecifications(ctx)
	if err != nil {
		return err
	}
	for _, name := range names {
		if !has(specs, name) {
			continue
		}
		if err := c.Indexes().DropOne(ctx, name); err != nil {
			// Another instance may have dropped it meanwhile.
			if left, lerr := c.Indexes().ListSpecifications(ctx); lerr != nil || has(left, name) {
				return err
			}
		}
	}
	return nil
}
