package media

import "github.com/prometheus/client_golang/prometheus"

// The package's metrics, process-wide as a Prometheus client's counters
// usually are; each server's registry collects them (Collectors).
var (
	uploads = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "parley_media_uploads_total",
		Help: "Files uploaded and stored.",
	})
	uploadBytes = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "parley_media_upload_bytes_total",
		Help: "Bytes of the files uploaded and stored.",
	})
	downloads = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "parley_media_downloads_total",
		Help: "Downloads of files and thumbnails begun.",
	})
	downloadBytes = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "parley_media_download_bytes_total",
		Help: "Bytes of files and thumbnails written to downloads.",
	})
)

// Collectors returns the package's metrics.
func Collectors() []prometheus.Collector {
	return []prometheus.Collector{uploads, uploadBytes, downloads, downloadBytes}
}
