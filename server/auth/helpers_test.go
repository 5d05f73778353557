package auth_test

import (
	"context"
	"errors"
	"testing"

	"github.com/parley-chat/parley/server/servertest"
)

func TestMain(m *testing.M) { servertest.Main(m) }

// countUsers returns how many users the database holds.
func countUsers(t *testing.T, srv *servertest.Server) int {
	t.Helper()
	n, err := srv.App.DB().Ent.User.Query().Count(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func errorsAs(err error, target any) bool { return errors.As(err, target) }
