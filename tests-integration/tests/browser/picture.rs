//! Two browser screenshots (PNG) side by side in one PNG.

use std::io::Cursor;

/// The gutter between the two pictures, in pixels, and its colour.
const GUTTER: usize = 8;
const GUTTER_RGB: [u8; 3] = [0xc9, 0xd1, 0xdc];

/// An RGB picture: width, height, rows of pixels.
struct Rgb {
    width: usize,
    height: usize,
    pixels: Vec<u8>,
}

fn decode(png_bytes: &[u8]) -> Rgb {
    let mut decoder = png::Decoder::new(Cursor::new(png_bytes));
    decoder.set_transformations(png::Transformations::EXPAND | png::Transformations::STRIP_16);
    let mut reader = decoder.read_info().expect("a PNG");
    let mut buffer = vec![0; reader.output_buffer_size().expect("a sized PNG")];
    let info = reader.next_frame(&mut buffer).expect("a frame");
    let channels = match info.color_type {
        png::ColorType::Rgb => 3,
        png::ColorType::Rgba => 4,
        other => panic!("unexpected screenshot colours: {other:?}"),
    };
    let (width, height) = (info.width as usize, info.height as usize);
    let mut pixels = Vec::with_capacity(width * height * 3);
    for row in buffer[..info.buffer_size()].chunks(info.line_size) {
        for pixel in row[..width * channels].chunks(channels) {
            pixels.extend_from_slice(&pixel[..3]);
        }
    }
    Rgb {
        width,
        height,
        pixels,
    }
}

/// `left` and `right` next to each other, top-aligned, as one PNG.
pub fn side_by_side(left: &[u8], right: &[u8]) -> Vec<u8> {
    let (left, right) = (decode(left), decode(right));
    let width = left.width + GUTTER + right.width;
    let height = left.height.max(right.height);
    let mut pixels = Vec::with_capacity(width * height * 3);
    for y in 0..height {
        for picture in [&left, &right] {
            if y < picture.height {
                let row = &picture.pixels[y * picture.width * 3..(y + 1) * picture.width * 3];
                pixels.extend_from_slice(row);
            } else {
                pixels.extend(GUTTER_RGB.repeat(picture.width));
            }
            if std::ptr::eq(picture, &left) {
                pixels.extend(GUTTER_RGB.repeat(GUTTER));
            }
        }
    }
    let mut out = Vec::new();
    let mut encoder = png::Encoder::new(&mut out, width as u32, height as u32);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    encoder.set_compression(png::Compression::High);
    let mut writer = encoder.write_header().expect("a PNG header");
    writer.write_image_data(&pixels).expect("the pixels");
    writer.finish().expect("a PNG");
    out
}
