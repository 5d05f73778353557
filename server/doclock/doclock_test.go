package doclock_test

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"os"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"

	"github.com/parley-chat/parley/server/doclock"
	"github.com/parley-chat/parley/server/embedded"
	"github.com/parley-chat/parley/server/servertest"
)

func database(t *testing.T, uri string) *mongo.Database {
	t.Helper()
	client, err := mongo.Connect(options.Client().ApplyURI(uri))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = client.Disconnect(context.Background()) })
	return client.Database("doclock_test")
}

func TestNeeded(t *testing.T) {
	t.Run("embedded FerretDB 1.x", func(t *testing.T) {
		m, err := embedded.StartMongo(t.TempDir(), slog.New(slog.NewTextHandler(io.Discard, nil)))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = m.Close() })
		got, err := doclock.Needed(context.Background(), database(t, m.URI()))
		if err != nil {
			t.Fatal(err)
		}
		if !got {
			t.Error("Needed = false on FerretDB 1.x, which loses concurrent updates; want true")
		}
	})
	t.Run("test engine", func(t *testing.T) {
		uri := os.Getenv("PARLEY_TEST_MONGO_URI")
		if uri == "" {
			t.Skip("PARLEY_TEST_MONGO_URI is not set (scripts/with-test-services sets it)")
		}
		got, err := doclock.Needed(context.Background(), database(t, uri))
		if err != nil {
			t.Fatal(err)
		}
		if got {
			t.Error("Needed = true on the test engine (MongoDB or FerretDB 2); want false")
		}
	})
}

func TestLocks_Nil(t *testing.T) {
	var l *doclock.Locks
	ran := false
	if err := l.Do(context.Background(), "k", func() error { ran = true; return nil }); err != nil || !ran {
		t.Fatalf("nil Locks.Do: ran=%v err=%v; want it to run fn", ran, err)
	}
	ok, err := l.TryDo(context.Background(), "k", func() error { return io.EOF })
	if !ok || err != io.EOF {
		t.Fatalf("nil Locks.TryDo = %v, %v; want true and fn's error", ok, err)
	}
	if l.Serial() || l.Prefixed("x") != nil {
		t.Fatal("nil Locks claim to serialize")
	}
}

// TestLocks_Busy: a Do that waits the whole 5 s for a lock held
// elsewhere fails with ErrBusy, without running its function; one whose
// request ends first fails with the request's error.
func TestLocks_Busy(t *testing.T) {
	l := testLocks(t)
	release, holder := hold(t, l, "k")
	ran := false
	short, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	if err := l.Do(short, "k", func() error { ran = true; return nil }); !errors.Is(err, context.DeadlineExceeded) || errors.Is(err, doclock.ErrBusy) {
		t.Errorf("Do with the request's deadline passing first: %v; want the deadline, not ErrBusy", err)
	}
	if err := l.Do(context.Background(), "k", func() error { ran = true; return nil }); !errors.Is(err, doclock.ErrBusy) {
		t.Errorf("Do of a lock held throughout: %v; want ErrBusy", err)
	}
	if ran {
		t.Error("Do ran its function without the lock")
	}
	close(release)
	if err := <-holder; err != nil {
		t.Fatal(err)
	}
	if err := l.Do(context.Background(), "k", func() error { ran = true; return nil }); err != nil || !ran {
		t.Errorf("Do of the lock released: ran=%v, %v", ran, err)
	}
}

// TestLocks_KeptWhileHeld: a holder slower than the lock's lease keeps
// its lock (nobody else takes it while the function runs), up to the
// longest hold, after which the lock lapses a lease later.
func TestLocks_KeptWhileHeld(t *testing.T) {
	// A lease long enough that a stall of the machine (under -race, on
	// two shared cores) does not outlast it between renewals.
	const lease = time.Second
	for _, tc := range []struct {
		name    string
		maxHold time.Duration
		// whether another TryDo gets the lock after four leases of
		// the holder's function
		taken bool
	}{
		{"renewed", time.Minute, false},
		{"past the longest hold", lease, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l := testLocks(t).WithTimes(lease, tc.maxHold)
			release, holder := hold(t, l, "k")
			// Time passing is what is tested: four leases, which an
			// unrenewed lock does not outlive.
			time.Sleep(4 * lease)
			ran, err := l.TryDo(context.Background(), "k", func() error { return nil })
			if err != nil {
				t.Fatal(err)
			}
			if ran != tc.taken {
				t.Errorf("TryDo of a lock whose holder still runs, after four leases: ran=%v; want %v", ran, tc.taken)
			}
			close(release)
			if err := <-holder; err != nil {
				t.Fatal(err)
			}
			if ran, err := l.TryDo(context.Background(), "k", func() error { return nil }); err != nil || !ran {
				t.Errorf("TryDo of the lock released: ran=%v, %v", ran, err)
			}
		})
	}
}

// testLocks returns locks in the test Redis, under a prefix of their own.
func testLocks(t *testing.T) *doclock.Locks {
	t.Helper()
	opts, err := redis.ParseURL(servertest.RedisURL())
	if err != nil {
		t.Fatal(err)
	}
	rdb := redis.NewClient(opts)
	t.Cleanup(func() { _ = rdb.Close() })
	return doclock.New(rdb, "doclock-test:"+bson.NewObjectID().Hex()+":")
}

// hold takes the lock named key with l.Do and returns once it holds it:
// closing release ends Do's function, whose error then comes on holder.
func hold(t *testing.T, l *doclock.Locks, key string) (release chan struct{}, holder chan error) {
	t.Helper()
	held := make(chan struct{})
	release, holder = make(chan struct{}), make(chan error, 1)
	go func() {
		holder <- l.Do(context.Background(), key, func() error {
			close(held)
			<-release
			return nil
		})
	}()
	select {
	case <-held:
	case err := <-holder:
		t.Fatalf("Do did not take the lock: %v", err)
	}
	return release, holder
}
