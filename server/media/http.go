package media

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"io"
	"mime"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"

	"connectrpc.com/connect"
	"go.mongodb.org/mongo-driver/v2/bson"
	"google.golang.org/protobuf/encoding/protojson"

	"github.com/parley-chat/parley/server/auth"
	"github.com/parley-chat/parley/server/reqlog"
	"github.com/parley-chat/parley/server/rpcerr"
)

// MaxUploadTime is the longest an upload may take, however slow the
// client.
const MaxUploadTime = 6 * time.Hour

// headLimit is how much of an upload is read before storing: enough to
// sniff the type and find an image's dimensions behind large metadata.
const headLimit = 512 << 10

// Handler serves, under Path:
//
//	PUT  /media/{id}?token=…           the upload (bearer token required)
//	GET  /media/{id}                   the file (bearer token or signature)
//	GET  /media/{id}/thumbnail         an image's preview
//
// Signed URLs carry ?expires=…&signature=… instead of a bearer token.
// The auth middleware must let these paths through without a token and
// attach the caller when there is one (auth.Public.Optional).
func (s *Service) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("PUT "+Path+"{id}", s.upload)
	mux.HandleFunc("GET "+Path+"{id}", s.download)
	mux.HandleFunc("GET "+Path+"{id}/thumbnail", s.download)
	return mux
}

// httpError is a refusal of an endpoint: a Connect code, written as the
// matching HTTP status with a JSON body like Connect's.
func (s *Service) httpError(w http.ResponseWriter, r *http.Request, err error) {
	var cerr *connect.Error
	if !errors.As(err, &cerr) {
		// As the RPCs map theirs: a store out of reach is UNAVAILABLE,
		// and no error says more than its code to the client (the
		// wrapped ones name the stores' addresses); the log has it.
		errors.As(rpcerr.From(r.Context(), s.log, r.Method+" media "+r.URL.Path, err), &cerr)
	}
	reqlog.SetCode(r.Context(), r.URL.Path, cerr.Code())
	status := rpcerr.HTTPStatus(cerr.Code())
	if retry := cerr.Meta().Get("Retry-After"); retry != "" {
		// A limit (rpcerr.TooMany), not a body too large.
		status = http.StatusTooManyRequests
		w.Header().Set("Retry-After", retry)
	}
	if status == http.StatusUnauthorized {
		w.Header().Set("WWW-Authenticate", `Bearer realm="parley"`)
	}
	body, _ := json.Marshal(map[string]string{"code": cerr.Code().String(), "message": cerr.Message()})
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.Header().Set("Content-Length", strconv.Itoa(len(body)+1))
	w.WriteHeader(status)
	_, _ = w.Write(append(body, '\n'))
}

// lingerTime bounds how long closeAfterRefusal waits for the client.
const lingerTime = 500 * time.Millisecond

// closeAfterRefusal ends the HTTP/1.1 connection of an upload refused
// while its body may still be coming (too slow, too large, a bad token),
// once httpError has written the refusal with "Connection: close": the
// refusal goes out with a FIN, and the connection stays open, discarding
// what the client still sends, until the client closes it or lingerTime
// passes. Closing at once with unread bytes makes the kernel send a RST,
// on which the client's HTTP stack may drop the refusal it has not read
// yet and report "connection reset" instead (Go's client does, when its
// write of the body fails first). net/http lingers the same way when it
// gives up on a body the handler left unread, but not when a read of the
// body failed, as the upload's rate and idle deadlines make it fail: then
// it closes at once (TestUploadLimits_MinRate got a reset, in full runs
// of make test on the embedded stores).
func closeAfterRefusal(w http.ResponseWriter) {
	rc := http.NewResponseController(w)
	// The refusal, buffered in the response, first: hijacking takes the
	// connection as it is.
	if err := rc.Flush(); err != nil {
		return
	}
	conn, buf, err := rc.Hijack()
	if err != nil {
		return
	}
	defer conn.Close()
	if err := buf.Flush(); err != nil {
		return
	}
	if cw, ok := conn.(interface{ CloseWrite() error }); ok {
		_ = cw.CloseWrite()
	}
	_ = conn.SetReadDeadline(time.Now().Add(lingerTime))
	_, _ = io.Copy(io.Discard, conn)
}

// errTooLarge is an upload body longer than declared (HTTP 413).
var errTooLarge = connect.NewError(connect.CodeResourceExhausted, errors.New("the body is longer than the declared size"))

func invalid(format string, args ...any) error {
	return connect.NewError(connect.CodeInvalidArgument, fmt.Errorf(format, args...))
}

// upload receives the bytes of a pending media.
func (s *Service) upload(w http.ResponseWriter, r *http.Request) {
	// The body may take long, but never stall: each read must make
	// progress within BodyIdleTimeout, and the body as a whole must keep
	// up MinUploadRate over UploadRateWindow.
	rc := http.NewResponseController(w)
	in := newBodyReader(r.Body, rc.SetReadDeadline, s.cfg.BodyIdleTimeout, s.cfg.MinUploadRate, s.cfg.UploadRateWindow)
	defer in.done()
	r.Body = in
	m, err := s.receive(r)
	if err != nil {
		if r.ProtoMajor == 1 {
			w.Header().Set("Connection", "close")
			defer closeAfterRefusal(w)
		}
		s.httpError(w, r, err)
		return
	}
	uploads.Inc()
	uploadBytes.Add(float64(m.Size))
	body, err := protojson.Marshal(toMedia(m))
	if err != nil {
		s.httpError(w, r, err)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.Write(body)
}

func (s *Service) receive(r *http.Request) (*mediaDoc, error) {
	ctx := r.Context()
	caller, ok := auth.FromContext(ctx)
	if !ok {
		return nil, connect.NewError(connect.CodeUnauthenticated, errors.New("sign in first"))
	}
	id, err := bson.ObjectIDFromHex(r.PathValue("id"))
	if err != nil {
		return nil, errMediaNotFound
	}
	g, err := s.sign.parseUploadToken(r.URL.Query().Get("token"))
	switch {
	case err != nil || g.MediaID != id:
		return nil, connect.NewError(connect.CodePermissionDenied, errors.New("bad upload token"))
	case g.Uploader != caller.UserID:
		return nil, connect.NewError(connect.CodePermissionDenied, errors.New("the upload token is another user's"))
	case !s.cfg.Now().Before(g.Expires):
		return nil, connect.NewError(connect.CodePermissionDenied, errors.New("the upload token expired"))
	}
	// A slot among the user's concurrent uploads comes first, so that a
	// refused request (which may be retried with the same token) has
	// changed nothing.
	slot, err := s.acquireSlot(ctx, caller.UserID, id)
	if err != nil {
		return nil, err
	}
	defer slot.release(context.WithoutCancel(ctx))
	// The token is single-use: the first request to present it takes it.
	// (Or any of the media's tokens: a retried CreateUpload gives another.)
	usedKey := s.cfg.RedisPrefix + "media:token:" + id.Hex()
	used, err := s.rdb.SetNX(ctx, usedKey, caller.UserID, g.Expires.Sub(s.cfg.Now())+time.Minute).Result()
	if err != nil {
		return nil, err
	}
	if !used {
		return nil, connect.NewError(connect.CodeFailedPrecondition, errors.New("the upload token was already used"))
	}
	m, err := s.lib.store.update(ctx, id, func(m *mediaDoc) (bson.D, error) {
		if m.State != statePending || m.UploaderID != caller.UserID || m.Size != g.Size {
			return nil, connect.NewError(connect.CodeFailedPrecondition, errors.New("the media is not waiting for an upload"))
		}
		return bson.D{{Key: "$set", Value: bson.D{{Key: "state", Value: stateUploading}, {Key: "stateAt", Value: s.lib.store.nowMs()}}}}, nil
	})
	if errors.Is(err, errNoMedia) {
		return nil, errMediaNotFound
	}
	if err != nil {
		if connect.CodeOf(err) != connect.CodeFailedPrecondition {
			// The upload did not start: the token works again, for a
			// retry of this PUT (or of CreateUpload, which gives another
			// for the same media).
			if derr := s.rdb.Del(context.WithoutCancel(ctx), usedKey).Err(); derr != nil {
				s.log.WarnContext(ctx, "give back upload token", "media", id.Hex(), "err", derr)
			}
		}
		return nil, err
	}
	// However slow the client, an upload ends within MaxUploadTime, so
	// that clean-up knows when an upload in progress has died.
	ctx, cancel := context.WithTimeout(ctx, MaxUploadTime)
	defer cancel()
	var done *mediaDoc
	switch {
	case r.ContentLength > g.Size:
		// Refused before reading any of it.
		err = errTooLarge
	case r.ContentLength >= 0 && r.ContentLength < g.Size:
		err = invalid("the body is %d bytes, not the declared %d", r.ContentLength, g.Size)
	default:
		done, err = s.store(ctx, m, r.Body)
	}
	if err != nil {
		// Nothing of a refused upload stays: not its files, not its
		// document. The client starts again with CreateUpload.
		dctx := context.WithoutCancel(ctx)
		_, derr := s.lib.delete(dctx, id, func(*mediaDoc) bool { return true })
		if derr == nil {
			// Even when the document went first (clean-up of an upload
			// that outlived its time), its files go.
			derr = s.lib.removeFiles(dctx, &mediaDoc{ID: id})
		}
		if derr != nil {
			s.log.ErrorContext(ctx, "remove refused upload", "media", id.Hex(), "err", derr)
		}
		return nil, err
	}
	return done, nil
}

// store checks and stores the body of an upload in state uploading and
// marks it ready.
func (s *Service) store(ctx context.Context, m *mediaDoc, body io.Reader) (*mediaDoc, error) {
	sum := sha256.New()
	in := &exactReader{r: body, left: m.Size, sum: sum}
	head := make([]byte, min(m.Size, headLimit))
	if _, err := io.ReadFull(in, head); err != nil {
		return nil, s.uploadReadError(err, m.Size)
	}
	contentType := sniff(head)
	class := classOf(contentType)
	if limit := s.cfg.maxBytes(class); m.Size > limit {
		// Declared as another kind of file, to get a larger limit.
		return nil, invalid("a %s is at most %d bytes", class, limit)
	}
	if want := declaredClass(m.DeclaredType); (want == TypeImage || want == TypeVideo || m.Avatar) && class != want {
		return nil, connect.NewError(connect.CodeInvalidArgument, mismatch(contentType, m.DeclaredType, m.Avatar))
	}
	var width, height int
	if class == TypeImage {
		var err error
		if width, height, err = s.cfg.Images.checkImage(head); err != nil {
			return nil, connect.NewError(connect.CodeInvalidArgument, err)
		}
	}
	err := s.lib.storage.Put(ctx, originalKey(m.fileID()), io.MultiReader(bytes.NewReader(head), in), m.Size, contentType)
	if err != nil {
		if rerr := in.err; rerr != nil {
			return nil, s.uploadReadError(rerr, m.Size)
		}
		return nil, err
	}
	if in.left != 0 || in.err != nil {
		return nil, s.uploadReadError(in.err, m.Size)
	}
	thumb := false
	if class == TypeImage {
		if err := s.storeThumbnail(ctx, m.fileID()); err != nil {
			return nil, err
		}
		thumb = true
	}
	digest := hex.EncodeToString(sum.Sum(nil))
	now := s.lib.store.nowMs()
	return s.lib.store.update(ctx, m.ID, func(m *mediaDoc) (bson.D, error) {
		if m.State != stateUploading {
			return nil, errMediaNotFound
		}
		m.State, m.StateAt, m.UploadedAt = stateReady, now, &now
		m.ContentType, m.FileType, m.SHA256 = contentType, class, digest
		m.Width, m.Height, m.Thumbnail = width, height, thumb
		return bson.D{{Key: "$set", Value: bson.D{
			{Key: "state", Value: stateReady}, {Key: "stateAt", Value: now}, {Key: "uploadedAt", Value: now},
			{Key: "contentType", Value: contentType}, {Key: "fileType", Value: class}, {Key: "sha256", Value: digest},
			{Key: "width", Value: width}, {Key: "height", Value: height}, {Key: "thumbnail", Value: thumb},
		}}}, nil
	})
}

// storeThumbnail decodes a stored image (its dimensions already checked)
// and stores its preview.
func (s *Service) storeThumbnail(ctx context.Context, id bson.ObjectID) error {
	select {
	case s.decoding <- struct{}{}:
		defer func() { <-s.decoding }()
	case <-ctx.Done():
		return ctx.Err()
	}
	obj, err := s.lib.storage.Open(ctx, originalKey(id))
	if err != nil {
		return err
	}
	defer obj.Close()
	jpg, err := thumbnail(obj)
	if err != nil {
		s.log.InfoContext(ctx, "image refused", "media", id.Hex(), "err", err)
		return invalid("the image cannot be decoded")
	}
	return s.lib.storage.Put(ctx, thumbnailKey(id), bytes.NewReader(jpg), int64(len(jpg)), "image/jpeg")
}

// uploadReadError explains a body that did not have the declared size.
func (s *Service) uploadReadError(err error, size int64) error {
	switch {
	case errors.Is(err, errBodyTooLong):
		return errTooLarge
	case errors.Is(err, errTooSlow):
		return connect.NewError(connect.CodeDeadlineExceeded, fmt.Errorf(
			"the upload is too slow: it must bring at least %d bytes a second over any %s; start again with CreateUpload",
			s.cfg.MinUploadRate, s.cfg.UploadRateWindow))
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF), err == nil:
		return invalid("the body is shorter than the declared %d bytes", size)
	default:
		var netErr net.Error
		if errors.As(err, &netErr) && netErr.Timeout() {
			return connect.NewError(connect.CodeDeadlineExceeded, errors.New("the body stopped arriving"))
		}
		// The client went, or its connection failed: nobody may read
		// this, and the error's text names addresses.
		return connect.NewError(connect.CodeCanceled, errors.New("the body stopped arriving: the connection failed"))
	}
}

var errBodyTooLong = errors.New("body longer than declared")

// idleDeadline moves a connection deadline forward before each read or
// write (at most once a second), so that a transfer that stops making
// progress fails after idle instead of holding the request for ever.
type idleDeadline struct {
	set   func(time.Time) error
	idle  time.Duration
	moved time.Time
}

func (d *idleDeadline) extend() {
	if now := time.Now(); now.Sub(d.moved) > time.Second {
		// Unsupported (on some test transports) only means no deadline.
		_ = d.set(now.Add(d.idle))
		d.moved = now
	}
}

// clear removes the deadline; the connection may serve more requests.
func (d *idleDeadline) clear() { _ = d.set(time.Time{}) }

type idleWriter struct {
	http.ResponseWriter
	deadline idleDeadline
}

func (i *idleWriter) Write(p []byte) (int, error) {
	i.deadline.extend()
	n, err := i.ResponseWriter.Write(p)
	downloadBytes.Add(float64(n))
	return n, err
}

// exactReader passes on exactly left bytes of r, hashing them, and fails
// as soon as r turns out to hold more (or ends before). Its err keeps the
// failure, since a storage backend may report it as its own.
type exactReader struct {
	r    io.Reader
	left int64
	sum  hash.Hash
	err  error
}

func (e *exactReader) Read(p []byte) (int, error) {
	if e.err != nil {
		return 0, e.err
	}
	if e.left == 0 {
		if err := e.probe(); err != nil {
			return 0, err
		}
		return 0, io.EOF
	}
	if int64(len(p)) > e.left {
		p = p[:e.left]
	}
	n, err := e.r.Read(p)
	e.left -= int64(n)
	e.sum.Write(p[:n])
	switch {
	case errors.Is(err, io.EOF) && e.left > 0:
		e.err = io.ErrUnexpectedEOF
		return n, e.err
	case errors.Is(err, io.EOF):
		return n, io.EOF
	case err != nil:
		e.err = err
		return n, err
	case e.left == 0:
		// Everything declared has come: look for more at once, since a
		// reader that wants exactly the declared size (S3's parts) may
		// never ask again.
		if perr := e.probe(); perr != nil {
			return n, perr
		}
		return n, io.EOF
	}
	return n, nil
}

// probe reads past the declared end: any byte there is too much.
func (e *exactReader) probe() error {
	var one [1]byte
	n, err := io.ReadFull(e.r, one[:])
	switch {
	case n > 0:
		e.err = errBodyTooLong
	case err != nil && !errors.Is(err, io.EOF) && !errors.Is(err, io.ErrUnexpectedEOF):
		e.err = err
	}
	return e.err
}

// download serves a ready file or its thumbnail.
func (s *Service) download(w http.ResponseWriter, r *http.Request) {
	ctx := r.Context()
	id, err := bson.ObjectIDFromHex(r.PathValue("id"))
	if err != nil {
		s.httpError(w, r, errMediaNotFound)
		return
	}
	thumb := strings.HasSuffix(r.URL.Path, "/thumbnail")
	q := r.URL.Query()
	var m *mediaDoc
	callerID := 0 // unknown: a signed URL
	cache := "private, max-age=31536000, immutable"
	if sig := q.Get("signature"); sig != "" {
		if !s.sign.checkSignedPath(r.URL.Path, q, s.cfg.Now()) {
			s.httpError(w, r, connect.NewError(connect.CodePermissionDenied, errors.New("the signed URL is invalid or expired")))
			return
		}
		m, err = s.lib.store.get(ctx, id)
		if errors.Is(err, errNoMedia) || (err == nil && m.State == stateDeleting) {
			err = errMediaNotFound
		}
		exp, _ := strconv.ParseInt(q.Get("expires"), 10, 64)
		cache = fmt.Sprintf("private, max-age=%d", max(0, exp-s.cfg.Now().Unix()))
	} else {
		caller, ok := auth.FromContext(ctx)
		if !ok {
			s.httpError(w, r, connect.NewError(connect.CodeUnauthenticated, errors.New("sign in first, or use a signed URL")))
			return
		}
		callerID = caller.UserID
		m, err = s.visible(ctx, id, caller.UserID)
	}
	if err == nil && (m.State != stateReady || (thumb && !m.Thumbnail)) {
		err = errMediaNotFound
	}
	if err != nil {
		s.httpError(w, r, err)
		return
	}
	// Others get of an avatar only its picture (as from GetMedia): no
	// file name, and an ETag that is not the file's hash.
	public := m.Avatar && callerID != m.UploaderID
	tag, name := m.SHA256, m.FileName
	if public {
		tag, name = m.ID.Hex(), "avatar."+strings.TrimPrefix(m.ContentType, "image/")
	}
	// A forwarded copy's bytes are its original's (see Library.Forward).
	key, contentType, etag := originalKey(m.fileID()), m.ContentType, `"`+tag+`"`
	if thumb {
		key, contentType, etag = thumbnailKey(m.fileID()), "image/jpeg", `"`+tag+`-thumbnail"`
	}
	obj, err := s.lib.storage.Open(ctx, key)
	if errors.Is(err, ErrNoObject) {
		err = errMediaNotFound
	}
	if err != nil {
		s.httpError(w, r, err)
		return
	}
	defer obj.Close()
	h := w.Header()
	h.Set("Content-Type", contentType)
	h.Set("ETag", etag)
	h.Set("Cache-Control", cache)
	h.Set("X-Content-Type-Options", "nosniff")
	disposition := "attachment"
	if IsSafeImage(contentType) {
		disposition = "inline"
	} else {
		// Should a browser render it anyway, it runs nothing.
		h.Set("Content-Security-Policy", "sandbox; default-src 'none'")
	}
	if thumb {
		name = strings.TrimSuffix(name, "."+extension(name)) + "-thumbnail.jpg"
	}
	if v := mime.FormatMediaType(disposition, map[string]string{"filename": name}); v != "" {
		h.Set("Content-Disposition", v)
	} else {
		h.Set("Content-Disposition", disposition)
	}
	iw := &idleWriter{ResponseWriter: w, deadline: idleDeadline{
		set: http.NewResponseController(w).SetWriteDeadline, idle: s.cfg.BodyIdleTimeout,
	}}
	downloads.Inc()
	http.ServeContent(iw, r, "", obj.ModTime(), obj)
	iw.deadline.clear()
}

func extension(name string) string {
	if i := strings.LastIndexByte(name, '.'); i > 0 {
		return name[i+1:]
	}
	return ""
}
