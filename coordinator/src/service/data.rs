//! Project data files over the wire: `HasData`, the chunked `PutData` upload and the
//! resumable `GetData` download (protocol::data). The bytes live in the store, in chunks
//! of [`CHUNK_BYTES`] keyed by digest and index, so every coordinator sharing a PostgreSQL
//! database serves every file (ARCHITECTURE.md says why the store and not a directory).

use std::pin::Pin;

use proto::v1 as pb;
use protocol::Digest;
use protocol::data::{CHUNK_BYTES, MAX_FILE_BYTES};
use tokio_stream::Stream;
use tonic::{Request, Response, Status, Streaming};

use super::{CoordinatorService, to_status};
use crate::Error;
use crate::store::Store;

/// The `GetData` response stream.
pub(super) type DataStream = Pin<Box<dyn Stream<Item = Result<pb::DataChunk, Status>> + Send>>;

fn bad(message: String) -> Status {
    to_status(Error::BadData(message))
}

impl<S: Store> CoordinatorService<S> {
    /// `HasData`: the digests asked for that are held whole.
    pub(super) async fn data_present(&self, digests: Vec<Vec<u8>>) -> Result<Vec<Vec<u8>>, Status> {
        if digests.len() > protocol::data::MAX_FILES {
            return Err(bad(format!(
                "HasData: {} digests, at most {}",
                digests.len(),
                protocol::data::MAX_FILES
            )));
        }
        let digests = digests
            .iter()
            .map(|d| Digest::from_slice("HasDataRequest.digests", d))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| to_status(e.into()))?;
        let held = self
            .inner
            .store
            .data_held(&digests)
            .await
            .map_err(to_status)?;
        Ok(digests
            .into_iter()
            .filter(|d| held.contains_key(d))
            .map(|d| d.0.to_vec())
            .collect())
    }

    /// `PutData`: hashes the chunks as they arrive and stores them under a key of this
    /// upload's own; they become the file only if the bytes hash to the digest named, so
    /// a half-sent or lying upload leaves nothing anyone can fetch.
    pub(super) async fn receive_data(
        &self,
        request: Request<Streaming<pb::DataChunk>>,
    ) -> Result<Response<pb::PutDataResponse>, Status> {
        self.writable()?;
        let mut stream = request.into_inner();
        let Some(first) = stream.message().await? else {
            return Err(bad("PutData: the stream held no chunk".into()));
        };
        let digest = Digest::from_slice("DataChunk.digest", &first.digest)
            .map_err(|e| to_status(e.into()))?;
        let size = first.size;
        if size > MAX_FILE_BYTES {
            return Err(bad(format!(
                "PutData: {size} bytes, over the {MAX_FILE_BYTES}-byte (1 GiB) limit per data file: split the file"
            )));
        }
        let store = &self.inner.store;
        if store
            .data_held(&[digest])
            .await
            .map_err(to_status)?
            .contains_key(&digest)
        {
            return Ok(Response::new(pb::PutDataResponse { already_held: true }));
        }
        self.room_for_bytes(size)?;
        let mut upload = [0u8; 32];
        getrandom::fill(&mut upload)
            .map_err(|e| bad(format!("no OS random source for an upload key: {e}")))?;
        let outcome = async {
            let mut hasher = blake3::Hasher::new();
            let mut pending: Vec<u8> = Vec::with_capacity(CHUNK_BYTES);
            let mut index = 0u64;
            let mut received = 0u64;
            let mut next = Some(first);
            while let Some(chunk) = next {
                if chunk.offset != received {
                    return Err(bad(format!(
                        "PutData: a chunk at offset {} where {received} was next; send the file in order",
                        chunk.offset
                    )));
                }
                if chunk.bytes.len() > CHUNK_BYTES {
                    return Err(bad(format!(
                        "PutData: a chunk of {} bytes, at most {CHUNK_BYTES}",
                        chunk.bytes.len()
                    )));
                }
                received += chunk.bytes.len() as u64;
                if received > size {
                    return Err(bad(format!("PutData: more than the {size} bytes announced")));
                }
                hasher.update(&chunk.bytes);
                pending.extend_from_slice(&chunk.bytes);
                // Stored chunks are all CHUNK_BYTES but the last, whatever the sender's
                // message sizes, so `GetData` finds any offset by division.
                while pending.len() >= CHUNK_BYTES {
                    let rest = pending.split_off(CHUNK_BYTES);
                    store
                        .put_data_chunk(upload, index, &pending)
                        .await
                        .map_err(to_status)?;
                    index += 1;
                    pending = rest;
                }
                next = stream.message().await?;
            }
            if !pending.is_empty() {
                store
                    .put_data_chunk(upload, index, &pending)
                    .await
                    .map_err(to_status)?;
            }
            if received != size {
                return Err(bad(format!(
                    "PutData: the stream ended after {received} of {size} bytes; upload again"
                )));
            }
            let got = Digest(*hasher.finalize().as_bytes());
            if got != digest {
                return Err(bad(format!(
                    "PutData: the bytes hash to {}, not {}",
                    got.to_hex(),
                    digest.to_hex()
                )));
            }
            store
                .finish_data(upload, digest, size)
                .await
                .map_err(to_status)
        }
        .await;
        match outcome {
            Ok(already_held) => {
                tracing::info!(digest = %digest.to_hex(), size, "data file stored");
                Ok(Response::new(pb::PutDataResponse { already_held }))
            }
            Err(status) => {
                if let Err(e) = store.discard_data(upload).await {
                    tracing::warn!("cannot drop a failed data upload: {e}");
                }
                Err(status)
            }
        }
    }

    /// `GetData`: the file from `offset`, one stored chunk per message, read from the
    /// store as the client takes them (a slow client holds one chunk, not the file).
    pub(super) async fn send_data(
        &self,
        request: pb::GetDataRequest,
        admitted: super::projects::Admitted,
    ) -> Result<DataStream, Status> {
        let digest = Digest::from_slice("GetDataRequest.digest", &request.digest)
            .map_err(|e| to_status(e.into()))?;
        let store = self.inner.store.clone();
        let Some(&size) = store
            .data_held(&[digest])
            .await
            .map_err(to_status)?
            .get(&digest)
        else {
            return Err(to_status(Error::DataNotHeld(digest.to_hex())));
        };
        let offset = request.offset;
        if offset > size {
            return Err(bad(format!(
                "GetData: offset {offset} is past the end ({size} bytes)"
            )));
        }
        let chunk = CHUNK_BYTES as u64;
        // Two chunks in flight at most: a slow client holds the task, not the file.
        let (tx, rx) = tokio::sync::mpsc::channel(2);
        tokio::spawn(async move {
            // The caller's place among its address's downloads, freed when this ends.
            let _admitted = admitted;
            let mut index = offset / chunk;
            let mut skip = (offset % chunk) as usize;
            while index * chunk < size {
                let item = match store.data_chunk(digest, index).await {
                    Ok(Some(bytes)) => Ok(pb::DataChunk {
                        digest: Vec::new(),
                        size,
                        offset: index * chunk + skip as u64,
                        bytes: bytes.get(skip..).unwrap_or_default().to_vec(),
                    }),
                    Ok(None) => Err(to_status(Error::DataNotHeld(digest.to_hex()))),
                    Err(e) => Err(to_status(e)),
                };
                let last = item.is_err();
                if tx.send(item).await.is_err() || last {
                    return; // the client went away, or the error was its last message
                }
                skip = 0;
                index += 1;
            }
        });
        let stream = tokio_stream::wrappers::ReceiverStream::new(rx);
        Ok(Box::pin(stream))
    }
}
