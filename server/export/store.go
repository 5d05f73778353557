package export

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"

	"github.com/parley-chat/parley/server/doclock"
	"github.com/parley-chat/parley/server/mongoindex"
)

// States of a job (an export), as stored.
const (
	statePending = "pending"
	stateRunning = "running"
	stateReady   = "ready"
	stateFailed  = "failed"
	stateExpired = "expired"
)

// job is a document of the exports collection: one export of one user's
// data, and the lease of the worker making it.
type job struct {
	ID        bson.ObjectID `bson:"_id"`
	UserID    int           `bson:"userId"`
	State     string        `bson:"state"`
	CreatedAt time.Time     `bson:"createdAt"`
	// NotBefore holds a pending job back until then (a retry's delay).
	NotBefore  time.Time  `bson:"notBefore"`
	StartedAt  *time.Time `bson:"startedAt,omitempty"`
	FinishedAt *time.Time `bson:"finishedAt,omitempty"`
	ExpiresAt  *time.Time `bson:"expiresAt,omitempty"`
	// LeaseOwner is the worker making a running job, until LeaseUntil;
	// once that has passed, any worker may take the job over.
	LeaseOwner string     `bson:"leaseOwner,omitempty"`
	LeaseUntil *time.Time `bson:"leaseUntil,omitempty"`
	// Attempts counts the claims; attempt n writes its zip under
	// fileKey(id, n), so that the files of attempts that died can be
	// found and removed.
	Attempts int `bson:"attempts"`
	// FileKey is where a ready job's zip is in the media storage.
	FileKey string `bson:"fileKey,omitempty"`
	Size    int64  `bson:"size,omitempty"`
	// LastError is why the last attempt failed, for operators; clients
	// never see it.
	LastError string `bson:"lastError,omitempty"`
}

// fileKey names the zip of one attempt in the media storage: never a
// media id (see media.Library.Storage).
func fileKey(id bson.ObjectID, attempt int) string {
	return "export-" + id.Hex() + "-" + strconv.Itoa(attempt) + ".zip"
}

// quota is a document of the exportQuotas collection: when a user may
// next start an export, and the export that started the wait.
type quota struct {
	UserID   int           `bson:"_id"`
	ExportID bson.ObjectID `bson:"exportId"`
	// CreatedAt is the export's creation time, for re-creating it should
	// the server have stopped between the two writes of request.
	CreatedAt time.Time `bson:"createdAt"`
	NextAt    time.Time `bson:"nextAt"`
}

var errNoJob = errors.New("no such export")

// store keeps the jobs and the quotas. On FerretDB 1.x, which loses
// concurrent updates of one document, every update of either collection
// holds one lock (exports are rare; see doclock); elsewhere each update is
// atomic on its own.
type store struct {
	jobs   *mongo.Collection
	quotas *mongo.Collection
	locks  *doclock.Locks
}

func newStore(db *mongo.Database, locks *doclock.Locks) *store {
	return &store{jobs: db.Collection("exports"), quotas: db.Collection("exportQuotas"), locks: locks.Prefixed("exports:")}
}

// EnsureIndexes creates the exports collection's indexes. It is
// idempotent.
func EnsureIndexes(ctx context.Context, db *mongo.Database) error {
	err := mongoindex.Ensure(ctx, db.Collection("exports"), []mongo.IndexModel{
		// A user's exports, newest first.
		{Keys: bson.D{{Key: "userId", Value: 1}, {Key: "createdAt", Value: -1}}, Options: options.Index().SetName("userId_createdAt")},
		// The workers' claims and sweeps.
		{Keys: bson.D{{Key: "state", Value: 1}, {Key: "createdAt", Value: 1}}, Options: options.Index().SetName("state_createdAt")},
	})
	if err != nil {
		return fmt.Errorf("create indexes on exports: %w", err)
	}
	return nil
}

// locked runs fn holding the lock of the collections (on FerretDB 1.x).
func (s *store) locked(ctx context.Context, fn func() error) error {
	return s.locks.Do(ctx, "all", fn)
}

func (s *store) get(ctx context.Context, id bson.ObjectID) (*job, error) {
	var j job
	err := s.jobs.FindOne(ctx, bson.D{{Key: "_id", Value: id}}).Decode(&j)
	if errors.Is(err, mongo.ErrNoDocuments) {
		return nil, errNoJob
	}
	if err != nil {
		return nil, fmt.Errorf("get export: %w", err)
	}
	return &j, nil
}

// ofUser lists the user's newest jobs, newest first.
func (s *store) ofUser(ctx context.Context, userID, limit int) ([]job, error) {
	cur, err := s.jobs.Find(ctx, bson.D{{Key: "userId", Value: userID}},
		options.Find().SetSort(bson.D{{Key: "createdAt", Value: -1}, {Key: "_id", Value: -1}}).SetLimit(int64(limit)))
	if err != nil {
		return nil, fmt.Errorf("list exports: %w", err)
	}
	var out []job
	if err := cur.All(ctx, &out); err != nil {
		return nil, fmt.Errorf("list exports: %w", err)
	}
	return out, nil
}

// active returns the user's pending or running job, if any.
func (s *store) active(ctx context.Context, userID int) (*job, error) {
	var j job
	err := s.jobs.FindOne(ctx, bson.D{
		{Key: "userId", Value: userID},
		{Key: "state", Value: bson.D{{Key: "$in", Value: bson.A{statePending, stateRunning}}}},
	}).Decode(&j)
	if errors.Is(err, mongo.ErrNoDocuments) {
		return nil, errNoJob
	}
	if err != nil {
		return nil, fmt.Errorf("active export: %w", err)
	}
	return &j, nil
}

// limited is a request refused by the quota: the next export is allowed
// at next.
type limited struct{ next time.Time }

func (l limited) Error() string { return "export quota: next at " + l.next.String() }

// request starts an export of userID at now, unless one is pending or
// running (it returns that one, created false) or the quota holds the
// user back until later (a limited error). The quota's document is the
// one place concurrent requests of a user meet: taking it is a single
// conditional update.
func (s *store) request(ctx context.Context, userID int, now time.Time, every time.Duration) (*job, bool, error) {
	if j, err := s.active(ctx, userID); err == nil {
		return j, false, nil
	} else if !errors.Is(err, errNoJob) {
		return nil, false, err
	}
	// The user's quota document first, if missing, allowing an export
	// now; then one conditional update takes it. (An upsert that meets
	// the document another request inserted fails with a duplicate-key
	// error that FerretDB reports as an internal error; an insert's is
	// reported as it should be.)
	_, err := s.quotas.InsertOne(ctx, quota{UserID: userID, NextAt: time.Unix(0, 0).UTC()})
	if err != nil && !mongo.IsDuplicateKeyError(err) {
		return nil, false, fmt.Errorf("create export quota: %w", err)
	}
	// take takes the quota for a new export where it matches free (the
	// quota's condition besides the user), and stores the export.
	take := func(free bson.E) (*job, error) {
		var q quota
		err := s.locked(ctx, func() error {
			return s.quotas.FindOneAndUpdate(ctx,
				bson.D{{Key: "_id", Value: userID}, free},
				bson.D{{Key: "$set", Value: bson.D{{Key: "exportId", Value: bson.NewObjectID()}, {Key: "createdAt", Value: now}, {Key: "nextAt", Value: now.Add(every)}}}},
				options.FindOneAndUpdate().SetReturnDocument(options.After),
			).Decode(&q)
		})
		if err != nil {
			if errors.Is(err, mongo.ErrNoDocuments) {
				return nil, err
			}
			return nil, fmt.Errorf("take export quota: %w", err)
		}
		return s.insertMissing(ctx, &q)
	}
	j, err := take(bson.E{Key: "nextAt", Value: bson.D{{Key: "$lte", Value: now}}})
	if !errors.Is(err, mongo.ErrNoDocuments) {
		return j, err == nil, err
	}
	var q quota
	// The quota holds the user back: an export started less than every
	// ago. It may still be running (started by a concurrent request), or
	// missing (its request stopped between the two writes).
	if err := s.quotas.FindOne(ctx, bson.D{{Key: "_id", Value: userID}}).Decode(&q); err != nil {
		return nil, false, fmt.Errorf("read export quota: %w", err)
	}
	j, err = s.get(ctx, q.ExportID)
	if errors.Is(err, errNoJob) {
		// Another request took the quota and has not stored its job yet
		// (or stopped before it could): store it for it.
		j, err = s.insertMissing(ctx, &q)
		return j, false, err
	}
	if err != nil {
		return nil, false, err
	}
	switch j.State {
	case statePending, stateRunning:
		return j, false, nil
	case stateFailed:
		// A failed export frees the quota (see fail), in a write after
		// the one that records the failure: one seen failed frees it
		// here too, unless another request took it meanwhile.
		j, err := take(bson.E{Key: "exportId", Value: q.ExportID})
		if !errors.Is(err, mongo.ErrNoDocuments) {
			return j, err == nil, err
		}
		return s.request(ctx, userID, now, every)
	}
	return nil, false, limited{next: q.NextAt}
}

// insertMissing stores the pending job that q took the quota for, unless
// it is there already.
func (s *store) insertMissing(ctx context.Context, q *quota) (*job, error) {
	_, err := s.jobs.InsertOne(ctx, job{
		ID: q.ExportID, UserID: q.UserID, State: statePending, CreatedAt: q.CreatedAt, NotBefore: q.CreatedAt,
	})
	if err != nil && !mongo.IsDuplicateKeyError(err) {
		return nil, fmt.Errorf("insert export: %w", err)
	}
	return s.get(ctx, q.ExportID)
}

// claim takes the oldest job that is pending and due, or running on a
// lease that expired (its worker died), for owner until now+lease, and
// counts the attempt. errNoJob: none is waiting.
func (s *store) claim(ctx context.Context, owner string, now time.Time, lease time.Duration) (*job, error) {
	var j job
	err := s.locked(ctx, func() error {
		return s.jobs.FindOneAndUpdate(ctx,
			bson.D{{Key: "$or", Value: bson.A{
				bson.D{{Key: "state", Value: statePending}, {Key: "notBefore", Value: bson.D{{Key: "$lte", Value: now}}}},
				bson.D{{Key: "state", Value: stateRunning}, {Key: "leaseUntil", Value: bson.D{{Key: "$lt", Value: now}}}},
			}}},
			bson.D{
				{Key: "$set", Value: bson.D{
					{Key: "state", Value: stateRunning}, {Key: "leaseOwner", Value: owner},
					{Key: "leaseUntil", Value: now.Add(lease)}, {Key: "startedAt", Value: now},
				}},
				{Key: "$inc", Value: bson.D{{Key: "attempts", Value: 1}}},
			},
			options.FindOneAndUpdate().SetSort(bson.D{{Key: "createdAt", Value: 1}}).SetReturnDocument(options.After),
		).Decode(&j)
	})
	if errors.Is(err, mongo.ErrNoDocuments) {
		return nil, errNoJob
	}
	if err != nil {
		return nil, fmt.Errorf("claim export: %w", err)
	}
	return &j, nil
}

// errLostLease is an update of a job whose lease its worker no longer
// holds: another worker took the job over.
var errLostLease = errors.New("export lease lost")

// leased applies update to the running job id if owner still holds its
// lease.
func (s *store) leased(ctx context.Context, id bson.ObjectID, owner string, update bson.D) error {
	var res *mongo.UpdateResult
	err := s.locked(ctx, func() error {
		var err error
		res, err = s.jobs.UpdateOne(ctx,
			bson.D{{Key: "_id", Value: id}, {Key: "state", Value: stateRunning}, {Key: "leaseOwner", Value: owner}}, update)
		return err
	})
	if err != nil {
		return fmt.Errorf("update export: %w", err)
	}
	if res.MatchedCount == 0 {
		return errLostLease
	}
	return nil
}

// renew extends owner's lease of job id to until.
func (s *store) renew(ctx context.Context, id bson.ObjectID, owner string, until time.Time) error {
	return s.leased(ctx, id, owner, bson.D{{Key: "$set", Value: bson.D{{Key: "leaseUntil", Value: until}}}})
}

var unsetLease = bson.E{Key: "$unset", Value: bson.D{{Key: "leaseOwner", Value: ""}, {Key: "leaseUntil", Value: ""}}}

// finish records owner's job id as ready: its zip under key, size bytes,
// kept until expires.
func (s *store) finish(ctx context.Context, id bson.ObjectID, owner, key string, size int64, now, expires time.Time) error {
	return s.leased(ctx, id, owner, bson.D{
		{Key: "$set", Value: bson.D{
			{Key: "state", Value: stateReady}, {Key: "fileKey", Value: key}, {Key: "size", Value: size},
			{Key: "finishedAt", Value: now}, {Key: "expiresAt", Value: expires},
		}},
		unsetLease,
	})
}

// retry puts owner's job id back to pending until notBefore, after an
// attempt that failed with cause.
func (s *store) retry(ctx context.Context, id bson.ObjectID, owner string, notBefore time.Time, cause string) error {
	return s.leased(ctx, id, owner, bson.D{
		{Key: "$set", Value: bson.D{{Key: "state", Value: statePending}, {Key: "notBefore", Value: notBefore}, {Key: "lastError", Value: cause}}},
		unsetLease,
	})
}

// release hands owner's job id back (its server is stopping), not
// counting the attempt.
func (s *store) release(ctx context.Context, id bson.ObjectID, owner string, now time.Time) error {
	return s.leased(ctx, id, owner, bson.D{
		{Key: "$set", Value: bson.D{{Key: "state", Value: statePending}, {Key: "notBefore", Value: now}}},
		{Key: "$inc", Value: bson.D{{Key: "attempts", Value: -1}}},
		unsetLease,
	})
}

// fail records owner's job id as failed for good, and frees the user's
// quota, so that the user may ask again at once.
func (s *store) fail(ctx context.Context, j *job, owner string, now time.Time, cause string) error {
	err := s.leased(ctx, j.ID, owner, bson.D{
		{Key: "$set", Value: bson.D{{Key: "state", Value: stateFailed}, {Key: "finishedAt", Value: now}, {Key: "lastError", Value: cause}}},
		unsetLease,
	})
	if err != nil {
		return err
	}
	err = s.locked(ctx, func() error {
		_, err := s.quotas.UpdateOne(ctx, bson.D{{Key: "_id", Value: j.UserID}, {Key: "exportId", Value: j.ID}},
			bson.D{{Key: "$set", Value: bson.D{{Key: "nextAt", Value: now}}}})
		return err
	})
	if err != nil {
		return fmt.Errorf("free export quota: %w", err)
	}
	return nil
}

// expiredReady lists ready jobs whose zips are due for deletion at now.
func (s *store) expiredReady(ctx context.Context, now time.Time, limit int) ([]job, error) {
	cur, err := s.jobs.Find(ctx, bson.D{
		{Key: "state", Value: stateReady},
		{Key: "expiresAt", Value: bson.D{{Key: "$lte", Value: now}}},
	}, options.Find().SetLimit(int64(limit)))
	if err != nil {
		return nil, fmt.Errorf("expired exports: %w", err)
	}
	var out []job
	if err := cur.All(ctx, &out); err != nil {
		return nil, fmt.Errorf("expired exports: %w", err)
	}
	return out, nil
}

// expire records a ready job whose files were deleted as expired.
func (s *store) expire(ctx context.Context, id bson.ObjectID) error {
	return s.locked(ctx, func() error {
		_, err := s.jobs.UpdateOne(ctx, bson.D{{Key: "_id", Value: id}, {Key: "state", Value: stateReady}}, bson.D{
			{Key: "$set", Value: bson.D{{Key: "state", Value: stateExpired}}},
			{Key: "$unset", Value: bson.D{{Key: "fileKey", Value: ""}}},
		})
		if err != nil {
			return fmt.Errorf("expire export: %w", err)
		}
		return nil
	})
}

// removeUser deletes every job of userID and its quota, and returns the
// jobs as they were.
func (s *store) removeUser(ctx context.Context, userID int) ([]job, error) {
	cur, err := s.jobs.Find(ctx, bson.D{{Key: "userId", Value: userID}})
	if err != nil {
		return nil, fmt.Errorf("exports of user: %w", err)
	}
	var jobs []job
	if err := cur.All(ctx, &jobs); err != nil {
		return nil, fmt.Errorf("exports of user: %w", err)
	}
	err = s.locked(ctx, func() error {
		if _, err := s.jobs.DeleteMany(ctx, bson.D{{Key: "userId", Value: userID}}); err != nil {
			return err
		}
		_, err := s.quotas.DeleteOne(ctx, bson.D{{Key: "_id", Value: userID}})
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("delete exports of user: %w", err)
	}
	return jobs, nil
}
