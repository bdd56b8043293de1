//! What goes over the wire to the upstream, independent of how it was validated.

use bytes::Bytes;

/// How much of a JSON body `Debug` shows.
const MAX_DEBUG_JSON_CHARS: usize = 512;

/// The body of a `POST /videos`: JSON for text to video and every Seedance request, multipart
/// form data when a file is uploaded (Veo image to video, V3).
#[derive(Clone, PartialEq)]
pub enum CreateBody {
    /// `application/json`.
    Json(serde_json::Value),
    /// `multipart/form-data`: text fields in order, then one file part.
    Multipart {
        /// Plain text fields (`prompt`, `model`, `size`, `seconds`, `personGeneration`).
        fields: Vec<(String, String)>,
        /// The uploaded file (field `input_reference`).
        file: UploadFile,
    },
}

/// One uploaded file of a multipart create.
#[derive(Clone, PartialEq)]
pub struct UploadFile {
    /// The multipart field name, `input_reference` on the upstream page.
    pub field: String,
    /// File name sent in the part's `Content-Disposition` (required by V3).
    pub filename: String,
    /// MIME type sent as the part's `Content-Type` (required by V3).
    pub mime_type: String,
    /// The file's bytes.
    pub data: Bytes,
}

impl std::fmt::Debug for UploadFile {
    // Never dump megabytes of image into a log line.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UploadFile")
            .field("field", &self.field)
            .field("filename", &self.filename)
            .field("mime_type", &self.mime_type)
            .field("len", &self.data.len())
            .finish()
    }
}

impl std::fmt::Debug for CreateBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CreateBody::Json(v) => {
                // A Seedance body may inline megabytes of base64 image: show its start only.
                let text = v.to_string();
                let shown: String = text.chars().take(MAX_DEBUG_JSON_CHARS).collect();
                if shown.len() < text.len() {
                    write!(f, "Json({shown}… {} bytes)", text.len())
                } else {
                    write!(f, "Json({shown})")
                }
            }
            CreateBody::Multipart { fields, file } => f
                .debug_struct("Multipart")
                .field("fields", fields)
                .field("file", file)
                .finish(),
        }
    }
}
