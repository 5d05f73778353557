package export

import (
	"encoding/json"
	"errors"
	"mime"
	"net/http"
	"net/url"
	"strconv"
	"time"

	"connectrpc.com/connect"
	"go.mongodb.org/mongo-driver/v2/bson"

	"github.com/parley-chat/parley/server/keyring"
	"github.com/parley-chat/parley/server/media"
	"github.com/parley-chat/parley/server/reqlog"
	"github.com/parley-chat/parley/server/rpcerr"
)

// Handler serves GET (and HEAD) Path{id}?expires=…&key=…&signature=…:
// the zip of a ready export, to whoever holds the signed URL that
// GetExport gave its owner. It needs no access token; the auth
// middleware must let Path through (auth.Public.Prefixes).
func (s *Service) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET "+Path+"{id}", s.download)
	return mux
}

var errBadURL = connect.NewError(connect.CodePermissionDenied, errors.New("the signed URL is invalid or expired"))

func (s *Service) download(w http.ResponseWriter, r *http.Request) {
	ctx := r.Context()
	now := s.cfg.now()
	if !s.checkSignedPath(r.URL.Path, r.URL.Query(), now) {
		s.httpError(w, r, errBadURL)
		return
	}
	id, err := bson.ObjectIDFromHex(r.PathValue("id"))
	if err != nil {
		// A signed path is one the server made; this cannot happen.
		s.httpError(w, r, errExportNotFound)
		return
	}
	j, err := s.store.get(ctx, id)
	if errors.Is(err, errNoJob) || (err == nil && (j.State != stateReady || j.ExpiresAt == nil || !now.Before(*j.ExpiresAt))) {
		err = errExportNotFound
	}
	if err != nil {
		s.httpError(w, r, err)
		return
	}
	obj, err := s.storage.Open(ctx, j.FileKey)
	if errors.Is(err, media.ErrNoObject) {
		err = errExportNotFound
	}
	if err != nil {
		s.httpError(w, r, err)
		return
	}
	defer obj.Close()
	h := w.Header()
	h.Set("Content-Type", "application/zip")
	h.Set("Cache-Control", "private, no-store")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Content-Security-Policy", "sandbox; default-src 'none'")
	name := "parley-export-" + j.CreatedAt.UTC().Format("2006-01-02") + ".zip"
	h.Set("Content-Disposition", mime.FormatMediaType("attachment", map[string]string{"filename": name}))
	iw := &idleWriter{ResponseWriter: w, rc: http.NewResponseController(w)}
	http.ServeContent(iw, r, "", obj.ModTime(), obj)
	// The connection may serve more requests, without a deadline.
	_ = iw.rc.SetWriteDeadline(time.Time{})
}

// downloadIdle is how long a download may make no progress: a client that
// stops reading is cut off then, rather than holding the connection (and
// the open file) for ever.
const downloadIdle = time.Minute

// idleWriter moves the connection's write deadline forward before its
// writes (at most once a second).
type idleWriter struct {
	http.ResponseWriter
	rc    *http.ResponseController
	moved time.Time
}

func (i *idleWriter) Write(p []byte) (int, error) {
	if now := time.Now(); now.Sub(i.moved) > time.Second {
		// Unsupported (on some test transports) only means no deadline.
		_ = i.rc.SetWriteDeadline(now.Add(downloadIdle))
		i.moved = now
	}
	return i.ResponseWriter.Write(p)
}

// checkSignedPath reports whether q (expires, key and signature) signs
// path and has not expired at now.
func (s *Service) checkSignedPath(path string, q url.Values, now time.Time) bool {
	expires := q.Get("expires")
	exp, err := strconv.ParseInt(expires, 10, 64)
	if err != nil || now.Unix() >= exp || strconv.FormatInt(exp, 10) != expires {
		return false
	}
	kid, sig := q.Get("key"), q.Get("signature")
	if kid == "" || !keyring.TokenChars(kid) || !keyring.TokenChars(sig) {
		return false
	}
	got, err := b64.DecodeString(sig)
	return err == nil && s.sign.Verify(kid, []byte(path+"\n"+expires), got)
}

// httpError writes a refusal as the matching HTTP status with a JSON body
// like Connect's, as the media endpoints do.
func (s *Service) httpError(w http.ResponseWriter, r *http.Request, err error) {
	cerr := new(connect.Error)
	if !errors.As(rpcerr.From(r.Context(), s.log, "download export", err), &cerr) {
		cerr = connect.NewError(connect.CodeInternal, rpcerr.Internal)
	}
	reqlog.SetCode(r.Context(), r.URL.Path, cerr.Code())
	body, _ := json.Marshal(map[string]string{"code": cerr.Code().String(), "message": cerr.Message()})
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(rpcerr.HTTPStatus(cerr.Code()))
	_, _ = w.Write(append(body, '\n'))
}
