package user

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"image"
	"image/color"
	"image/png"
	"net/http"
	"regexp"
	"strings"
	"time"
)

// IdenticonPath is where generated avatars are served, followed by
// "<seed>.png".
const IdenticonPath = "/avatars/identicon/"

var seedPattern = regexp.MustCompile(`^[0-9a-f]{32}$`)

// newIdenticonURL returns the URL of a new random identicon.
func newIdenticonURL() string {
	b := make([]byte, 16)
	rand.Read(b)
	return IdenticonPath + hex.EncodeToString(b) + ".png"
}

// identicon draws the image for a seed: a 5x5 grid, mirrored left to right,
// in one colour on a light background, the same for the same seed always.
func identicon(seed string) image.Image {
	sum := sha256.Sum256([]byte(seed))
	const cells, cell, margin = 5, 40, 20
	size := cells*cell + 2*margin
	img := image.NewPaletted(image.Rect(0, 0, size, size), color.Palette{
		color.RGBA{0xf0, 0xf0, 0xf0, 0xff},
		color.RGBA{sum[0]/2 + 0x20, sum[1]/2 + 0x20, sum[2]/2 + 0x20, 0xff},
	})
	for row := range cells {
		for col := range 3 {
			if sum[3+row*3+col]%2 == 0 {
				continue
			}
			for _, c := range []int{col, cells - 1 - col} {
				x0, y0 := margin+c*cell, margin+row*cell
				for y := y0; y < y0+cell; y++ {
					for x := x0; x < x0+cell; x++ {
						img.SetColorIndex(x, y, 1)
					}
				}
			}
		}
	}
	return img
}

// IdenticonHandler serves generated avatars. They depend on nothing but
// the seed in the URL, so they are cacheable for ever and need no storage.
func IdenticonHandler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			w.Header().Set("Allow", "GET, HEAD")
			http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
			return
		}
		name, ok := strings.CutPrefix(r.URL.Path, IdenticonPath)
		seed, isPNG := strings.CutSuffix(name, ".png")
		if !ok || !isPNG || !seedPattern.MatchString(seed) {
			http.NotFound(w, r)
			return
		}
		var buf bytes.Buffer
		if err := png.Encode(&buf, identicon(seed)); err != nil {
			http.Error(w, "internal error", http.StatusInternalServerError)
			return
		}
		h := w.Header()
		h.Set("Cache-Control", "public, max-age=31536000, immutable")
		h.Set("ETag", `"`+seed+`"`)
		h.Set("Content-Type", "image/png")
		h.Set("X-Content-Type-Options", "nosniff")
		// ServeContent answers If-None-Match (lists, weak tags, *) and
		// Range requests as RFC 9110 says.
		http.ServeContent(w, r, "", time.Time{}, bytes.NewReader(buf.Bytes()))
	})
}
